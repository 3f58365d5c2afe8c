package proc

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// TestPanicInReaper: the reaper runs again after a panic (after 1 s) and
// reaps the child whose SIGCHLD the panicking run took, so the Run waiting
// for it still returns.
func TestPanicInReaper(t *testing.T) {
	reaper(t)
	reports := make(chan safego.Report, 4)
	prev := safego.SetReporter(func(r safego.Report) { reports <- r })
	t.Cleanup(func() { safego.SetReporter(prev) })
	var n atomic.Int32
	hook := func() {
		if n.Add(1) == 1 {
			panic("injected")
		}
	}
	signalHook.Store(&hook)
	t.Cleanup(func() { signalHook.Store(nil) })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type result struct {
		out []byte
		err error
	}
	ran := make(chan result, 1)
	go func() {
		out, err := Run(ctx, "sh", "-c", "echo still reaped")
		ran <- result{out, err}
	}()
	var r safego.Report
	select {
	case r = <-reports:
		// The first backoff is 1 s; it is longer when this binary's
		// reaper panicked before (go test -count).
		if r.Name != "reaper" || r.Value != "injected" || r.Restart < time.Second || !strings.Contains(r.Stack, "TestPanicInReaper") {
			t.Fatalf("report %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reaper's panic was not reported")
	}
	select {
	case res := <-ran:
		if res.err != nil || string(res.out) != "still reaped\n" {
			t.Fatalf("Run after the reaper's panic: %q, %v", res.out, res.err)
		}
	case <-time.After(r.Restart + 5*time.Second):
		t.Fatalf("Run did not return %s after the reaper's panic", r.Restart+5*time.Second)
	}
	if _, err := Run(ctx, "true"); err != nil {
		t.Fatalf("a later Run: %v", err)
	}
}

// TestPanicInWaiter: a panic in the goroutine that waits for one child
// still ends its Run, with a failure, never a success.
func TestPanicInWaiter(t *testing.T) {
	reaper(t)
	reports := make(chan safego.Report, 4)
	prev := safego.SetReporter(func(r safego.Report) { reports <- r })
	t.Cleanup(func() { safego.SetReporter(prev) })
	hook := func() { panic("injected") }
	waiterHook.Store(&hook)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Run(ctx, "true")
	waiterHook.Store(nil)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Run whose waiter panicked: %v (context: %v), want a failure at once", err, ctx.Err())
	}
	select {
	case r := <-reports:
		if r.Name != "child waiter" || r.Value != "injected" {
			t.Fatalf("report %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter's panic was not reported")
	}
	if _, err := Run(ctx, "true"); err != nil {
		t.Fatalf("a later Run: %v", err)
	}
}
