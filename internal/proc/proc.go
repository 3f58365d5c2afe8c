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
	"syscall"

	"golang.org/x/sys/unix"
)

var (
	mu      sync.Mutex
	reaping bool
	waiters = map[int]chan unix.WaitStatus{}
	// early holds statuses of children that exited before Run registered
	// them (impossible while Run holds mu across the start, kept for safety).
	early = map[int]unix.WaitStatus{}
	// Orphans counts reaped processes that nobody was waiting for.
	orphans int
)

// StartReaper starts reaping children on SIGCHLD. Call it once, early in
// PID1; afterwards start children only through Run.
func StartReaper() {
	mu.Lock()
	reaping = true
	mu.Unlock()
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGCHLD)
	go func() {
		for range ch {
			reap()
		}
	}()
}

func reap() {
	for {
		var st unix.WaitStatus
		pid, err := unix.Wait4(-1, &st, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		mu.Lock()
		if w, ok := waiters[pid]; ok {
			delete(waiters, pid)
			w <- st
		} else {
			orphans++
			early[pid] = st
			if len(early) > 1024 { // orphans never claimed; keep the map bounded
				clear(early)
			}
		}
		mu.Unlock()
	}
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
	mu.Lock()
	r := reaping
	mu.Unlock()
	if !r {
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			return out, fmt.Errorf("%s: %w: %s", argv[0], err, bytes.TrimSpace(out))
		}
		return out, nil
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", argv[0], err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		pr.Close()
		pw.Close()
		return nil, err
	}
	done := make(chan unix.WaitStatus, 1)
	mu.Lock()
	p, err := os.StartProcess(path, argv, &os.ProcAttr{
		Files: []*os.File{devnull, pw, pw},
		Env:   []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err == nil {
		if st, ok := early[p.Pid]; ok {
			delete(early, p.Pid)
			done <- st
		} else {
			waiters[p.Pid] = done
		}
	}
	mu.Unlock()
	pw.Close()
	devnull.Close()
	if err != nil {
		pr.Close()
		return nil, fmt.Errorf("%s: %w", argv[0], err)
	}
	outc := make(chan []byte, 1)
	go func() {
		var b bytes.Buffer
		b.ReadFrom(pr)
		pr.Close()
		outc <- b.Bytes()
	}()
	var st unix.WaitStatus
	select {
	case st = <-done:
	case <-ctx.Done():
		p.Signal(syscall.SIGKILL)
		st = <-done
	}
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
