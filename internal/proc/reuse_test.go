package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var reaperOnce sync.Once

// reaper makes the test process the reaper of its orphans, as PID1 is for
// every process, and starts the reaper (once per test binary).
func reaper(t *testing.T) {
	t.Helper()
	reaperOnce.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		StartReaper()
	})
}

// nextPid makes pid the next one the kernel hands out (CAP_SYS_ADMIN):
// pids are reused only after wraparound otherwise, which a test cannot
// wait for. Any fork or new thread on the machine may take it first, so
// callers check and retry.
func nextPid(pid int) error {
	return os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0)
}

// orphan starts a process that outlives its parent, so that it is
// reparented to the test process and reaped with nobody waiting for it;
// it exits with status 7 after delay. It returns its pid.
func orphan(t *testing.T, delay string) int {
	t.Helper()
	out, err := Run(context.Background(), "sh", "-c", "sh -c 'sleep "+delay+"; exit 7' </dev/null >/dev/null 2>&1 & echo $!")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("orphan's pid: %q", out)
	}
	return pid
}

// gone waits until pid is reaped (no /proc entry, not even a zombie).
func gone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d was not reaped", pid)
		}
	}
}

// errPidTaken means that another process, or a thread (the Go runtime
// starts threads at will, and threads take pids too), got the pid first:
// the case is tried again with another orphan.
var errPidTaken = errors.New("the pid was taken by another process or thread first")

// startAs starts argv so that the child gets pid.
func startAs(pid int, argv ...string) (*Process, error) {
	for range 20 {
		if err := nextPid(pid); err != nil {
			return nil, err
		}
		p, err := Start(Spec{Argv: argv})
		if err != nil {
			return nil, err
		}
		if p.Pid() == pid {
			return p, nil
		}
		p.Signal(syscall.SIGKILL) // reaped and handed to its own waiter later
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			return nil, errPidTaken
		}
	}
	return nil, errPidTaken
}

// attempts runs a case until it is not spoiled by errPidTaken.
func attempts(t *testing.T, try func() error) {
	t.Helper()
	for i := 0; ; i++ {
		err := try()
		if err == nil {
			return
		}
		if !errors.Is(err, errPidTaken) || i == 9 {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
		t.Logf("attempt %d: %v; again", i+1, err)
	}
}

func describe(st unix.WaitStatus) string {
	if st.Signaled() {
		return "killed by signal " + st.Signal().String()
	}
	return "exit status " + strconv.Itoa(st.ExitStatus())
}

// ownStatus checks that p, a "sleep 0.5" just started, is still running
// for a while and then ends with its own status (0), not the orphan's (7).
func ownStatus(t *testing.T, p *Process, how string) {
	t.Helper()
	select {
	case <-p.Done():
		t.Fatalf("child %d (sleep 0.5, still running) was reported exited at once, %s: the status of the orphan that had pid %d before it (%s)", p.Pid(), describe(p.Status()), p.Pid(), how)
	case <-time.After(200 * time.Millisecond):
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("child %d: no exit status within 5 s", p.Pid())
	}
	if st := p.Status(); !st.Exited() || st.ExitStatus() != 0 {
		t.Fatalf("child %d (sleep 0.5) ended with %s, not its own exit status 0 (%s)", p.Pid(), describe(st), how)
	}
}

// TestOrphanStatusNotHandedToReusedPid: an orphan exits and is reaped with
// nobody waiting for it; later a new child gets the same pid. The new
// child's Process must report the new child's exit, not the orphan's.
func TestOrphanStatusNotHandedToReusedPid(t *testing.T) {
	reaper(t)
	attempts(t, func() error {
		before := Orphans()
		pid := orphan(t, "0")
		gone(t, pid)
		if Orphans() == before {
			t.Fatalf("orphan %d was reaped but not counted", pid)
		}
		p, err := startAs(pid, "sleep", "0.5")
		if err != nil {
			return err
		}
		ownStatus(t, p, "reused after the orphan was reaped")
		return nil
	})
}

// TestReaperHandsNoStatusToPidReusedAfterWait: the reaper has just reaped
// an orphan, so its pid is free, and a new child is forked with that pid
// before the reaper hands the status on. The status must still not reach
// the new child. The hook makes that interleaving happen every time it
// can: on the old code the fork went through at once, now it waits for
// the hand-over.
func TestReaperHandsNoStatusToPidReusedAfterWait(t *testing.T) {
	reaper(t)
	var target atomic.Int64
	target.Store(-1)
	got := make(chan *Process, 1)
	failed := make(chan error, 1)
	hook := func(pid int) {
		if !target.CompareAndSwap(int64(pid), -1) {
			return
		}
		// The orphan is reaped and its pid is free: start a child that
		// takes it, and give that start time to finish before the reaper
		// goes on (if the reaper lets it: the start may have to wait).
		done := make(chan struct{})
		go func() {
			defer close(done)
			p, err := startAs(pid, "sleep", "0.5")
			if err != nil {
				failed <- err
				return
			}
			got <- p
		}()
		select {
		case <-done:
		case <-time.After(300 * time.Millisecond):
		}
	}
	reapedHook.Store(&hook)
	defer reapedHook.Store(nil)
	attempts(t, func() error {
		target.Store(int64(orphan(t, "0.3")))
		select {
		case p := <-got:
			ownStatus(t, p, "forked between the reaper's wait and its hand-over")
			return nil
		case err := <-failed:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("the orphan was not reaped, or no child was started, within 10 s")
		}
		return nil
	})
}
