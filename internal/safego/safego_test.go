package safego

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// capture collects the reports made while the test runs.
type capture struct {
	mu sync.Mutex
	rs []Report
	ch chan Report
}

func captureReports(t *testing.T) *capture {
	c := &capture{ch: make(chan Report, 100)}
	prev := SetReporter(func(r Report) {
		c.mu.Lock()
		c.rs = append(c.rs, r)
		c.mu.Unlock()
		c.ch <- r
	})
	t.Cleanup(func() { SetReporter(prev) })
	return c
}

func (c *capture) next(t *testing.T) Report {
	t.Helper()
	select {
	case r := <-c.ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no report")
		return Report{}
	}
}

func fastBackoff(t *testing.T) {
	lo, hi, reset := minBackoff, maxBackoff, resetAfter
	minBackoff, maxBackoff, resetAfter = 10*time.Millisecond, 40*time.Millisecond, time.Hour
	t.Cleanup(func() { minBackoff, maxBackoff, resetAfter = lo, hi, reset })
}

func TestGoRecoversAndReports(t *testing.T) {
	c := captureReports(t)
	deferred := make(chan struct{})
	Go("test go", func() {
		defer close(deferred)
		panic("injected")
	})
	r := c.next(t)
	<-deferred
	if r.Name != "test go" || r.Value != "injected" || r.Restart != 0 {
		t.Fatalf("report %+v", r)
	}
	if !strings.Contains(r.Stack, "safego_test.go") {
		t.Fatalf("the stack does not show where the panic was:\n%s", r.Stack)
	}
}

func TestCallReturnsPanicAsError(t *testing.T) {
	c := captureReports(t)
	err := Call("test call", func() error { panic(io.ErrUnexpectedEOF) })
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Name != "test call" || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Call = %v", err)
	}
	if err.Error() != "panic in test call: unexpected EOF" {
		t.Fatalf("message %q", err)
	}
	if r := c.next(t); r.Name != "test call" {
		t.Fatalf("report %+v", r)
	}
	if err := Call("test call ok", func() error { return io.EOF }); err != io.EOF {
		t.Fatalf("Call passes fn's error on: %v", err)
	}
	var nilPanic *PanicError
	if err := Call("test nil", func() error { panic(nil) }); !errors.As(err, &nilPanic) {
		t.Fatalf("panic(nil) is a panic too: %v", err)
	}
}

func TestRestartBacksOff(t *testing.T) {
	fastBackoff(t)
	c := captureReports(t)
	runs := 0
	var starts []time.Time
	err := Restart("test restart", nil, func() error {
		runs++
		starts = append(starts, time.Now())
		if runs <= 4 {
			panic("again")
		}
		return io.EOF
	})
	if err != io.EOF || runs != 5 {
		t.Fatalf("Restart = %v after %d runs, want io.EOF after 5", err, runs)
	}
	want := []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 40 * time.Millisecond}
	for i, w := range want {
		r := c.next(t)
		if r.Restart != w {
			t.Errorf("report %d: restart in %s, want %s", i, r.Restart, w)
		}
		if !strings.Contains(r.Stack, "TestRestartBacksOff.func1") {
			t.Errorf("report %d: the stack does not show where the panic was:\n%s", i, r.Stack)
		}
		if gap := starts[i+1].Sub(starts[i]); gap < w {
			t.Errorf("run %d started %s after the panic, want at least %s", i+2, gap, w)
		}
	}
}

func TestRestartStops(t *testing.T) {
	lo := minBackoff
	minBackoff = time.Hour
	t.Cleanup(func() { minBackoff = lo })
	captureReports(t)
	stop := make(chan struct{})
	done := make(chan error)
	go func() { done <- Restart("test stop", stop, func() error { panic("once") }) }()
	time.Sleep(50 * time.Millisecond)
	close(stop)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Restart stopped with %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Restart still waits after stop was closed")
	}
}

func TestLoopRunsAgain(t *testing.T) {
	fastBackoff(t)
	c := captureReports(t)
	again := make(chan struct{})
	n := 0
	Loop("test loop", nil, func() {
		n++
		if n == 1 {
			panic("first")
		}
		close(again)
	})
	c.next(t)
	select {
	case <-again:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop did not run again after its panic")
	}
}

func TestLimited(t *testing.T) {
	var got []Report
	clock := time.Now()
	l := &limiter{buckets: map[string]*bucket{}, now: func() time.Time { return clock }}
	fn := l.reporter(func(r Report) { got = append(got, r) })
	for range burst + 3 {
		fn(Report{Name: "flood"})
	}
	fn(Report{Name: "other"})
	if len(got) != burst+1 {
		t.Fatalf("%d reports passed of %d of one name and 1 of another, want %d", len(got), burst+3, burst+1)
	}
	clock = clock.Add(refillEvery)
	fn(Report{Name: "flood"})
	if last := got[len(got)-1]; last.Name != "flood" || last.Suppressed != 3 {
		t.Fatalf("the report after the pause: %+v, want 3 suppressed", last)
	}
	for i := range maxNames + 10 {
		fn(Report{Name: fmt.Sprint("conn ", i)})
	}
	if n := len(l.buckets); n > maxNames+1 {
		t.Fatalf("%d buckets for %d names, want at most %d", n, maxNames+10, maxNames+1)
	}
}

func TestReporterPanicIsContained(t *testing.T) {
	prev := SetReporter(func(Report) { panic("reporter") })
	t.Cleanup(func() { SetReporter(prev) })
	if err := Call("test bad reporter", func() error { panic("x") }); err == nil {
		t.Fatal("no error")
	}
}

func TestValueCut(t *testing.T) {
	c := captureReports(t)
	Call("test long", func() error { panic(strings.Repeat("é", MaxValue)) })
	r := c.next(t)
	if len(r.Value) > MaxValue || !strings.HasSuffix(r.Value, " [cut]") || !strings.HasPrefix(r.Value, "éé") {
		t.Fatalf("value of %d bytes: %.40q...", len(r.Value), r.Value)
	}
}
