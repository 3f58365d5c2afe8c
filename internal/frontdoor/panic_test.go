package frontdoor

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/safego/safegotest"
)

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
	ch := safegotest.Reports(t, 16)
	safegotest.PanicOnce(t, &testHookHandle)
	s := f.start(t, Options{Protocol: TLS})
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "db.test"}
	if c, err := tls.Dial("tcp", s.Addr().String(), cfg); err == nil {
		dropped(t, c)
		c.Close()
	}
	safegotest.ExpectReport(t, ch, "connection")
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
	ch := safegotest.Reports(t, 16)
	safegotest.PanicOnce(t, &testHookCopy)
	s := f.start(t, Options{Protocol: TLS})
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "db.test"}
	c, err := tls.Dial("tcp", s.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	safegotest.ExpectReport(t, ch, "copy")
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
	ch := safegotest.Reports(t, 16)
	safegotest.PanicOnce(t, &testHookAccept)
	s, err := Listen(Options{Addr: "127.0.0.1:0", Protocol: TLS, Backend: f.backend,
		TLS: &tls.Config{Certificates: []tls.Certificate{f.server}}})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	if r := safegotest.ExpectReport(t, ch, "accept"); r.Restart != time.Second {
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
