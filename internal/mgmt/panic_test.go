package mgmt

import (
	"crypto/tls"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// reports captures what safego reports while the test runs.
func reports(t *testing.T) chan safego.Report {
	ch := make(chan safego.Report, 16)
	prev := safego.SetReporter(func(r safego.Report) { ch <- r })
	t.Cleanup(func() { safego.SetReporter(prev) })
	return ch
}

// panicOnce makes *hook panic the first time it runs. Call it before
// setup: its cleanup, which runs after the server's, clears it.
func panicOnce(t *testing.T, hook *func()) {
	var n atomic.Int32
	*hook = func() {
		if n.Add(1) == 1 {
			panic("injected")
		}
	}
	t.Cleanup(func() { *hook = nil })
}

func expectReport(t *testing.T, ch chan safego.Report, name string) safego.Report {
	t.Helper()
	select {
	case r := <-ch:
		if !strings.Contains(r.Name, name) || r.Value != "injected" || !strings.Contains(r.Stack, ".panicOnce.func1") {
			t.Fatalf("report %q: %q, want one of a panic in %q with its stack", r.Name, r.Value, name)
		}
		return r
	case <-time.After(5 * time.Second):
		t.Fatalf("no report of the panic in %s", name)
		return safego.Report{}
	}
}

// TestPanicInHandshake: a panic in one connection's handshake drops that
// connection at once; the API answers the next caller.
func TestPanicInHandshake(t *testing.T) {
	ch := reports(t)
	panicOnce(t, &testHookHandshake)
	e := setup(t)
	t0 := time.Now()
	if code, _, err := e.call(t, "control", "GET", "/v1/status", ""); err == nil {
		t.Fatalf("the call whose handshake panicked got %d", code)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("the connection whose handshake panicked was dropped only after %s", d)
	}
	expectReport(t, ch, "handshake")
	if code, body, err := e.call(t, "control", "GET", "/v1/status", ""); err != nil || code != 200 {
		t.Fatalf("the call after the panic: %d %s %v", code, body, err)
	}
}

// TestPanicInAcceptLoop: the accept loop runs again after a panic (after
// 1 s) and the API answers; Close still ends Serve.
func TestPanicInAcceptLoop(t *testing.T) {
	ch := reports(t)
	panicOnce(t, &testHookAccept)
	e := setup(t)
	if r := expectReport(t, ch, "accept"); r.Restart != time.Second {
		t.Errorf("the accept loop runs again in %s, want 1s", r.Restart)
	}
	if code, body, err := e.call(t, "operator", "GET", "/v1/status", ""); err != nil || code != 200 {
		t.Fatalf("the call after the accept loop's panic: %d %s %v", code, body, err)
	}
}

// TestPanicInRefusalFlusher: the goroutine that writes the counts of
// suppressed handshake refusals runs again after a panic, and Close still
// writes the last counts and returns promptly.
func TestPanicInRefusalFlusher(t *testing.T) {
	ch := reports(t)
	panicOnce(t, &testHookFlush)
	e := setup(t)
	expectReport(t, ch, "refusal")
	for range refusalBurst + 5 {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.s.Addr().String(),
			&tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1"})
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Read(make([]byte, 1))
			c.Close()
		}
	}
	// Every refusal is dealt with (recorded or counted) before Close.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n := 0
		for _, r := range records(t, e.log) {
			if r.What == "management TLS handshake" {
				n++
			}
		}
		if n >= refusalBurst || time.Now().After(deadline) {
			break
		}
	}
	time.Sleep(100 * time.Millisecond)
	t0 := time.Now()
	e.s.Close()
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("Close took %s", d)
	}
	counted := false
	for _, r := range records(t, e.log) {
		if r.What == "management TLS handshake" && strings.Contains(r.Result, "suppressed") {
			counted = true
		}
	}
	if !counted {
		t.Error("no record counts the suppressed refusals after the flusher's panic")
	}
}

// TestPanicInHandler: a panic in a request's handler is reported, its
// connection is dropped, and the next call is answered.
func TestPanicInHandler(t *testing.T) {
	ch := reports(t)
	panicOnce(t, &testHookRequest)
	e := setup(t)
	if code, _, err := e.call(t, "control", "GET", "/v1/status", ""); err == nil {
		t.Fatalf("the call whose handler panicked got %d", code)
	}
	expectReport(t, ch, "request")
	if code, body, err := e.call(t, "control", "GET", "/v1/status", ""); err != nil || code != 200 {
		t.Fatalf("the call after the panic: %d %s %v", code, body, err)
	}
}
