package frontdoor

import (
	"crypto/tls"
	"errors"
	"io"
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

// panicOnce makes *hook panic the first time it runs. Call it before the
// server starts: its cleanup, which runs after the server's, clears it.
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

// dropped checks that the front door closed c: a read ends with an
// error other than a timeout.
func dropped(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("anyone there?"))
	_, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the connection whose goroutine panicked is still open")
	}
}

func idle(t *testing.T, s *Server) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); s.Stats().Active != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still counted active", s.Stats().Active)
		}
	}
}

// TestPanicInConnectionHandler: a panic while one connection is handled
// drops that connection; the front door serves the next.
func TestPanicInConnectionHandler(t *testing.T) {
	f := newFixture(t)
	ch := reports(t)
	panicOnce(t, &testHookHandle)
	s := f.start(t, Options{Protocol: TLS})
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "db.test"}
	if c, err := tls.Dial("tcp", s.Addr().String(), cfg); err == nil {
		dropped(t, c)
		c.Close()
	}
	expectReport(t, ch, "connection")
	c, err := tls.Dial("tcp", s.Addr().String(), cfg)
	if err != nil {
		t.Fatalf("the connection after the panic: %v", err)
	}
	echoes(t, c)
	c.Close()
	idle(t, s)
}

// TestPanicInCopy: a panic in one direction's copy drops the whole
// connection (both directions, both ends), and the next is served.
func TestPanicInCopy(t *testing.T) {
	f := newFixture(t)
	ch := reports(t)
	panicOnce(t, &testHookCopy)
	s := f.start(t, Options{Protocol: TLS})
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "db.test"}
	c, err := tls.Dial("tcp", s.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	expectReport(t, ch, "copy")
	dropped(t, c)
	c.Close()
	idle(t, s)
	c, err = tls.Dial("tcp", s.Addr().String(), cfg)
	if err != nil {
		t.Fatalf("the connection after the panic: %v", err)
	}
	echoes(t, c)
	c.Close()
}

// TestPanicInAcceptLoop: the accept loop runs again after a panic (after
// safego's first backoff, 1 s) and serves; Close still ends it.
func TestPanicInAcceptLoop(t *testing.T) {
	f := newFixture(t)
	ch := reports(t)
	panicOnce(t, &testHookAccept)
	s, err := Listen(Options{Addr: "127.0.0.1:0", Protocol: TLS, Backend: f.backend,
		TLS: &tls.Config{Certificates: []tls.Certificate{f.server}}})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	if r := expectReport(t, ch, "accept"); r.Restart != time.Second {
		t.Errorf("the accept loop runs again in %s, want 1s", r.Restart)
	}
	c, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: f.pool, ServerName: "db.test"})
	if err != nil {
		t.Fatalf("a connection after the accept loop's panic: %v", err)
	}
	echoes(t, c)
	c.Close()
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v before Close", err)
	default:
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
}
