package mgmt

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/safego/safegotest"
)

// TestPanicInHandshake: a panic in one connection's handshake drops that
// connection at once; the API answers the next caller.
func TestPanicInHandshake(t *testing.T) {
	ch := safegotest.Reports(t, 16)
	safegotest.PanicOnce(t, &testHookHandshake)
	e := setup(t)
	t0 := time.Now()
	if code, _, err := e.call(t, "control", "GET", "/v1/status", ""); err == nil {
		t.Fatalf("the call whose handshake panicked got %d", code)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("the connection whose handshake panicked was dropped only after %s", d)
	}
	safegotest.ExpectReport(t, ch, "handshake")
	if code, body, err := e.call(t, "control", "GET", "/v1/status", ""); err != nil || code != 200 {
		t.Fatalf("the call after the panic: %d %s %v", code, body, err)
	}
}

// TestPanicInAcceptLoop: the accept loop runs again after a panic (after
// 1 s) and the API answers; Close still ends Serve.
func TestPanicInAcceptLoop(t *testing.T) {
	ch := safegotest.Reports(t, 16)
	safegotest.PanicOnce(t, &testHookAccept)
	e := setup(t)
	if r := safegotest.ExpectReport(t, ch, "accept"); r.Restart != time.Second {
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
	ch := safegotest.Reports(t, 16)
	safegotest.PanicOnce(t, &testHookFlush)
	e := setup(t)
	safegotest.ExpectReport(t, ch, "refusal")
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
	ch := safegotest.Reports(t, 16)
	safegotest.PanicOnce(t, &testHookRequest)
	e := setup(t)
	if code, _, err := e.call(t, "control", "GET", "/v1/status", ""); err == nil {
		t.Fatalf("the call whose handler panicked got %d", code)
	}
	safegotest.ExpectReport(t, ch, "request")
	if code, body, err := e.call(t, "control", "GET", "/v1/status", ""); err != nil || code != 200 {
		t.Fatalf("the call after the panic: %d %s %v", code, body, err)
	}
}
