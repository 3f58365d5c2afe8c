// Package proc runs child processes for a PID1 that also reaps orphans.
//
// PID1 inherits every orphaned process and must wait for it, or zombies
// accumulate. A reaper that calls wait4(-1) would also steal the exit status
// of children that os/exec is waiting for, so once the reaper runs, every
// child is started through Run: the reaper owns all waiting and hands each
// status to the Run that started that child.
package proc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// mu orders every fork against every wait. Start holds it from the fork
// until the child's pid is in waiters, and the reaper holds it from wait4
// until the status is handed on. A pid is freed for reuse only by that
// wait4, so no fork can take a pid between its reaping and the hand-over,
// and no child can be reaped before it is registered: every status found
// under mu belongs to the child registered under that pid, or to an
// orphan, and never to a later child with the same pid.
var (
	mu      sync.Mutex
	reaping bool
	waiters = map[int]chan unix.WaitStatus{}
	// Orphans counts reaped processes that nobody was waiting for.
	orphans int
	// reapedHook, set only by tests, runs in the reaper for each pid it
	// reaps, before the status is handed on (with mu held).
	reapedHook atomic.Pointer[func(pid int)]
	// signalHook, set only by tests, runs in the reaper for each SIGCHLD
	// it receives, before it reaps.
	signalHook atomic.Pointer[func()]
	// waiterHook, set only by tests, runs at the start of each child's
	// waiter goroutine.
	waiterHook atomic.Pointer[func()]
)

// StartReaper starts reaping children on SIGCHLD. Call it once, early in
// PID1; afterwards start children only through Run.
func StartReaper() {
	mu.Lock()
	reaping = true
	mu.Unlock()
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGCHLD)
	// A panic here would end PID1. The reaper instead runs again after
	// a pause (1 s, doubling to 30 s), and each run reaps first: SIGCHLDs
	// coalesce, so the one the panicking run took may stand for children
	// that nothing else will announce (docs/boot.md).
	safego.Loop("reaper", nil, func() {
		reap()
		for range ch {
			if h := signalHook.Load(); h != nil {
				(*h)()
			}
			reap()
		}
	})
}

func reap() {
	for {
		if !reapOne() {
			return
		}
	}
}

// reapOne reaps one exited child, if there is one, and hands its status to
// the Start that registered it; a child nobody registered is an orphan
// and its status is dropped (kept for nobody: its pid may be reused).
func reapOne() bool {
	mu.Lock()
	defer mu.Unlock()
	var st unix.WaitStatus
	pid, err := unix.Wait4(-1, &st, unix.WNOHANG, nil)
	if pid <= 0 || err != nil {
		return false
	}
	if h := reapedHook.Load(); h != nil {
		(*h)(pid)
	}
	if w, ok := waiters[pid]; ok {
		delete(waiters, pid)
		w <- st // buffered: never blocks
	} else {
		orphans++
	}
	return true
}

// Orphans returns how many processes were reaped that no Run waited for.
func Orphans() int {
	mu.Lock()
	defer mu.Unlock()
	return orphans
}

// Run runs a program to completion and returns its combined output. The
// error names the program and carries its output when it fails. Cancelling
// ctx kills the program.
func Run(ctx context.Context, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("proc: empty command")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p, err := Start(Spec{Argv: argv, Stdout: pw})
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, err
	}
	outc := make(chan []byte, 1)
	safego.Go("child output reader", func() {
		var b bytes.Buffer
		defer func() { pr.Close(); outc <- b.Bytes() }() // also after a panic: Run waits for it
		b.ReadFrom(pr)
	})
	var st unix.WaitStatus
	select {
	case <-p.Done():
	case <-ctx.Done():
		p.Signal(syscall.SIGKILL)
		<-p.Done()
	}
	st = p.Status()
	out := <-outc
	switch {
	case ctx.Err() != nil:
		return out, fmt.Errorf("%s: %w", argv[0], ctx.Err())
	case st.Signaled():
		return out, fmt.Errorf("%s: killed by signal %v: %s", argv[0], st.Signal(), bytes.TrimSpace(out))
	case st.ExitStatus() != 0:
		return out, fmt.Errorf("%s: exit status %d: %s", argv[0], st.ExitStatus(), bytes.TrimSpace(out))
	}
	return out, nil
}

// Spec describes a child process for Start.
type Spec struct {
	Argv []string
	// UID and GID, when UID is not zero, are the credentials the child
	// runs with (supplementary groups cleared). A non-root child loses
	// every capability at exec.
	UID, GID uint32
	Dir      string
	Env      []string // default: PATH and LC_ALL=C
	// Stdout receives the child's standard output, and its standard
	// error unless Stderr is set; nil means /dev/null. Standard input is
	// always /dev/null.
	Stdout *os.File
	Stderr *os.File
	// Path is the program to run; default Argv[0] looked up in PATH.
	Path string
	// ExtraFiles become the child's descriptors 3, 4, ...
	ExtraFiles []*os.File
	// AmbientCaps are the capabilities a non-root child keeps across exec
	// (CAP_* numbers); none by default.
	AmbientCaps []uintptr
}

// Process is a child started by Start.
type Process struct {
	p    *os.Process
	done chan struct{}
	st   unix.WaitStatus
}

// Start starts a child in its own session. It works with and without the
// reaper; with it, the reaper collects the exit status.
func Start(s Spec) (*Process, error) {
	if len(s.Argv) == 0 {
		return nil, fmt.Errorf("proc: empty command")
	}
	path := s.Path
	if path == "" {
		var err error
		if path, err = exec.LookPath(s.Argv[0]); err != nil {
			return nil, fmt.Errorf("%s: %w", s.Argv[0], err)
		}
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	out := s.Stdout
	if out == nil {
		out = devnull
	}
	errOut := s.Stderr
	if errOut == nil {
		errOut = out
	}
	env := s.Env
	if env == nil {
		env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	}
	sys := &syscall.SysProcAttr{Setsid: true}
	if s.UID != 0 {
		sys.Credential = &syscall.Credential{Uid: s.UID, Gid: s.GID, Groups: []uint32{}}
		sys.AmbientCaps = s.AmbientCaps
	}
	done := make(chan unix.WaitStatus, 1)
	// The fork and the registration under one hold of mu: the reaper
	// cannot wait for this child until it is registered (see mu).
	mu.Lock()
	r := reaping
	p, err := os.StartProcess(path, s.Argv, &os.ProcAttr{Dir: s.Dir, Files: append([]*os.File{devnull, out, errOut}, s.ExtraFiles...), Env: env, Sys: sys})
	if err == nil && r {
		waiters[p.Pid] = done
	}
	mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Argv[0], err)
	}
	proc := &Process{p: p, done: make(chan struct{})}
	safego.Go("child waiter", func() {
		got := false
		defer func() {
			// Also after a panic Done must close, and a status lost with
			// it must never read as success: it reads as killed.
			if !got {
				proc.st = unix.WaitStatus(unix.SIGKILL)
			}
			close(proc.done)
		}()
		if h := waiterHook.Load(); h != nil {
			(*h)()
		}
		if r {
			proc.st = <-done
		} else {
			ps, _ := p.Wait()
			if ps != nil {
				proc.st = unix.WaitStatus(ps.Sys().(syscall.WaitStatus))
			}
		}
		got = true
	})
	return proc, nil
}

// Pid is the child's process id.
func (p *Process) Pid() int { return p.p.Pid }

// Signal sends sig to the child unless it has exited.
func (p *Process) Signal(sig os.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	return p.p.Signal(sig)
}

// Done is closed when the child has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Status is the child's wait status, valid once Done is closed.
func (p *Process) Status() unix.WaitStatus { return p.st }
