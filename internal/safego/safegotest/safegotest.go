// Package safegotest is what the packages' panic tests share: capturing
// safego's reports, a test hook that panics once, and the check that a
// report names the goroutine and carries the injected panic's stack.
package safegotest

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// Reports captures what safego reports while the test runs, up to n
// reports buffered.
func Reports(t *testing.T, n int) chan safego.Report {
	ch := make(chan safego.Report, n)
	prev := safego.SetReporter(func(r safego.Report) { ch <- r })
	t.Cleanup(func() { safego.SetReporter(prev) })
	return ch
}

// PanicOnce makes *hook panic ("injected") the first time it runs and
// counts its calls. Call it before the code under test starts: its
// cleanup, which runs after that code's, clears the hook.
func PanicOnce(t *testing.T, hook *func()) *atomic.Int32 {
	var n atomic.Int32
	*hook = func() {
		if n.Add(1) == 1 {
			panic("injected")
		}
	}
	t.Cleanup(func() { *hook = nil })
	return &n
}

// ExpectReport waits up to 5 s for a report of PanicOnce's panic in the
// goroutine called name.
func ExpectReport(t *testing.T, ch chan safego.Report, name string) safego.Report {
	t.Helper()
	select {
	case r := <-ch:
		if !strings.Contains(r.Name, name) || r.Value != "injected" || !strings.Contains(r.Stack, "safegotest.PanicOnce.func1") {
			t.Fatalf("report %q: %q, want one of a panic in %q with its stack", r.Name, r.Value, name)
		}
		return r
	case <-time.After(5 * time.Second):
		t.Fatalf("no report of the panic in %s", name)
		return safego.Report{}
	}
}
