package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/bootlog"
	"github.com/bulwarkvm/bulwark/internal/control"
	"github.com/bulwarkvm/bulwark/internal/proc"
	"github.com/bulwarkvm/bulwark/internal/safego"
	"github.com/bulwarkvm/bulwark/internal/sandbox"
	svcproc "github.com/bulwarkvm/bulwark/services/service"
)

// A service is a network-facing part of the node in a process of its own:
// the init binary started again with the role argv[0] = svcproc.Argv0 and
// argv[1] = its name (service.go), or a program of its own on the system
// image (program), under its own uid and gid, with no capabilities unless
// it lists some. PID1 talks to it over a control socket (internal/control)
// and restarts it with backoff when it exits.
type service struct {
	name string
	// program is the service's own program; empty: the init binary.
	program  string
	uid, gid uint32
	caps     []uintptr
	// files makes the descriptors the service gets after its control
	// socket (descriptor 3): 4, 5, ... PID1 closes its copies once the
	// process has them.
	files func() ([]*os.File, error)
	// handlers are the operations the service may ask PID1 for.
	handlers map[string]control.Handler
	// secretOps are those whose requests carry key material
	// (control.CallSecret).
	secretOps []string
	// exited, when set, runs each time a process of the service has
	// ended (before any restart): to end what PID1 started for it.
	exited func()

	ready chan struct{} // closed at the first control.OpReady
	stop  chan struct{}

	// rejects limits the records of a service's refused messages: a
	// compromised service must not stall the audit log with them.
	rejects rejectLimit

	mu       sync.Mutex
	p        *proc.Process
	peer     *control.Peer
	restarts int
	state    string
	lastExit string
	sandbox  sandbox.Report
	readyAt  time.Time
}

// Restart backoff: 1 s, doubling to 30 s; back to 1 s after a process
// that ran for a minute.
const (
	restartFirst  = time.Second
	restartMax    = 30 * time.Second
	restartStable = time.Minute
)

// supervise starts the service and keeps it running until the teardown
// stops it. It waits up to wait for the first start to say it is ready.
func (b *boot) supervise(s *service, wait time.Duration) error {
	s.ready = make(chan struct{})
	s.stop = make(chan struct{})
	s.state = "starting"
	if s.handlers == nil {
		s.handlers = map[string]control.Handler{}
	}
	var once sync.Once
	s.handlers[control.OpReady] = func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
		var rep sandbox.Report
		if err := control.Decode(raw, &rep); err != nil {
			return nil, nil, err
		}
		s.mu.Lock()
		s.sandbox, s.state, s.readyAt = rep, "running", time.Now()
		s.mu.Unlock()
		once.Do(func() { close(s.ready) })
		return nil, nil, nil
	}
	started := make(chan error, 1)
	b.goSafe("supervisor "+s.name, func() { b.superviseLoop(s, started) })
	if err := <-started; err != nil {
		return err
	}
	select {
	case <-s.ready:
		return nil
	case <-time.After(wait):
		s.mu.Lock()
		last := s.lastExit
		s.mu.Unlock()
		return fmt.Errorf("service %s: not ready after %s (%s)", s.name, wait, last)
	}
}

func (b *boot) superviseLoop(s *service, started chan<- error) {
	backoff := restartFirst
	first := true
	for {
		t0 := time.Now()
		p, err := b.startService(s)
		if first {
			started <- err
			first = false
			if err != nil {
				return
			}
		}
		if err != nil {
			b.log.Error("service: start failed", "service", s.name, "err", err)
		} else {
			select {
			case <-p.Done():
			case <-s.stop:
				return
			}
			select {
			case <-s.stop: // stopped by the teardown: no restart to count
				s.mu.Lock()
				s.peer.Close()
				s.state = "stopped"
				s.mu.Unlock()
				return
			default:
			}
			if s.exited != nil {
				s.exited()
			}
			st := p.Status()
			why := exitString(st)
			s.mu.Lock()
			s.peer.Close()
			s.restarts++
			s.lastExit, s.state = why, "restarting"
			n := s.restarts
			s.mu.Unlock()
			if time.Since(t0) >= restartStable {
				backoff = restartFirst
			}
			b.log.Warn(fmt.Sprintf("service %s: %s; restarting in %s", s.name, why, backoff), "restarts", n)
			b.audit.Append(audit.KindBoot, "", "", fmt.Sprintf("service %s %s (restart %d)", s.name, why, n), "restarting")
		}
		select {
		case <-s.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, restartMax)
	}
}

func exitString(st unix.WaitStatus) string {
	if st.Signaled() {
		return "killed by signal " + st.Signal().String()
	}
	return fmt.Sprintf("exited with status %d", st.ExitStatus())
}

// startService starts one process of s.
func (b *boot) startService(s *service) (*proc.Process, error) {
	exe, err := s.program, error(nil)
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	var files []*os.File
	if s.files != nil {
		if files, err = s.files(); err != nil {
			return nil, fmt.Errorf("service %s: %w", s.name, err)
		}
	}
	defer closeFiles(files)
	mine, theirs, err := control.Pair()
	if err != nil {
		return nil, err
	}
	defer theirs.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		mine.Close()
		return nil, err
	}
	p, err := proc.Start(proc.Spec{
		Path: exe, Argv: []string{svcproc.Argv0, s.name, strconv.Itoa(len(files))},
		UID: s.uid, GID: s.gid, AmbientCaps: s.caps, Dir: "/",
		Stdout: pw, Stderr: pw, ExtraFiles: append([]*os.File{theirs}, files...),
	})
	pw.Close()
	if err != nil {
		mine.Close()
		pr.Close()
		return nil, fmt.Errorf("service %s: %w", s.name, err)
	}
	// Its output is untrusted: the console gets it through the escaping
	// log path, each line prefixed with the service's name.
	safego.Go("service output "+s.name, func() {
		bootlog.CopyLines(pr, bootlog.MaxLine, func(l string) { bootlog.Relay(b.log, s.name, l) })
		pr.Close()
	})
	peer, err := control.New(mine, control.Options{
		Name: s.name, Want: control.Creds{Pid: int32(p.Pid()), UID: s.uid}, Handlers: s.handlers, SecretOps: s.secretOps,
		OnReject: s.rejects.limited(func(reason string) {
			b.log.Warn(reason)
			b.audit.Append(audit.KindBoot, "service "+s.name, "", reason, "refused")
		}),
	})
	if err != nil {
		p.Signal(syscall.SIGKILL)
		return nil, err
	}
	// The control socket carries the service's untrusted messages: a
	// panic serving it ends this connection (and with it the service's
	// process, which PID1 restarts), never the node.
	safego.Go("control "+s.name, func() {
		if err := peer.Serve(context.Background()); err != nil {
			b.log.Warn("service control socket", "service", s.name, "err", err)
		}
	})
	s.mu.Lock()
	s.p, s.peer = p, peer
	s.mu.Unlock()
	return p, nil
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// stopService is the service's teardown step: no more restarts, SIGTERM,
// SIGKILL when its share is spent.
func (s *service) stopService(ctx context.Context) error {
	close(s.stop)
	s.mu.Lock()
	p, peer := s.p, s.peer
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	p.Signal(syscall.SIGTERM)
	if peer != nil {
		peer.Close()
	}
	select {
	case <-p.Done():
		return nil
	case <-ctx.Done():
	}
	p.Signal(syscall.SIGKILL)
	select {
	case <-p.Done():
	case <-time.After(time.Second):
	}
	return fmt.Errorf("service %s did not stop on SIGTERM; killed: %w", s.name, errCutShort)
}

// errNotRunning: the service has no process that said it is ready.
var errNotRunning = errors.New("not running")

// call asks the running service for op; a process that has not yet said
// it is confined and ready is not asked.
func (s *service) call(ctx context.Context, op string, args, result any) error {
	s.mu.Lock()
	peer, state := s.peer, s.state
	s.mu.Unlock()
	if peer == nil || state != "running" {
		return fmt.Errorf("service %s (%s): %w", s.name, state, errNotRunning)
	}
	fds, err := peer.Call(ctx, op, args, result)
	closeFiles(fds)
	return err
}

// waitRunning waits until the service has a ready process, or ctx ends.
func (s *service) waitRunning(ctx context.Context) error {
	for {
		s.mu.Lock()
		state := s.state
		s.mu.Unlock()
		switch state {
		case "running":
			return nil
		case "stopped":
			return fmt.Errorf("service %s: %w", s.name, errNotRunning)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("service %s (%s): %w", s.name, state, errNotRunning)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// serviceStatus is one service's line in status.
type serviceStatus struct {
	Name       string `json:"name"`
	State      string `json:"state"`
	Pid        int    `json:"pid"`
	UID        string `json:"uid"`
	CapEff     string `json:"cap_eff"`
	NoNewPrivs string `json:"no_new_privs"`
	Seccomp    string `json:"seccomp"`
	Landlock   string `json:"landlock"`
	Restarts   int    `json:"restarts"`
	LastExit   string `json:"last_exit,omitempty"`
}

// status reads what the kernel says of the service's process, not what
// the service says of itself.
func (s *service) status() serviceStatus {
	s.mu.Lock()
	st := serviceStatus{Name: s.name, State: s.state, Restarts: s.restarts, LastExit: s.lastExit, Landlock: s.sandbox.Landlock}
	p := s.p
	s.mu.Unlock()
	if p != nil {
		select {
		case <-p.Done():
		default:
			st.Pid = p.Pid()
			if self, err := sandbox.ReadSelf(strconv.Itoa(p.Pid())); err == nil {
				st.UID, st.CapEff, st.NoNewPrivs, st.Seccomp = self.UID, self.CapEff, self.NoNewPrivs, self.Seccomp
			}
		}
	}
	return st
}

// summary is the service's line in the readiness report.
func (st serviceStatus) summary() string {
	caps := "no capabilities"
	if strings.Trim(st.CapEff, "0") != "" {
		caps = "capabilities " + st.CapEff
	}
	return fmt.Sprintf("service %s: %s, pid %d, uid %s, %s, no_new_privs %s, seccomp %s, landlock %s, %d restarts",
		st.Name, st.State, st.Pid, st.UID, caps, st.NoNewPrivs, st.Seccomp, st.Landlock, st.Restarts)
}

// rejectLimit passes the first 10 refusals, then one every 10 s, saying
// how many were not recorded one by one.
type rejectLimit struct {
	mu         sync.Mutex
	n          int
	last       time.Time
	suppressed int
}

func (l *rejectLimit) limited(fn func(string)) func(string) {
	return func(reason string) {
		l.mu.Lock()
		l.n++
		pass := l.n <= 10 || time.Since(l.last) >= 10*time.Second
		suppressed := l.suppressed
		if pass {
			l.last, l.suppressed = time.Now(), 0
		} else {
			l.suppressed++
		}
		l.mu.Unlock()
		if !pass {
			return
		}
		if suppressed > 0 {
			reason += fmt.Sprintf(" (and %d more refused messages not recorded one by one)", suppressed)
		}
		fn(reason)
	}
}
