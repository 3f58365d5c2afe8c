package frontdoor

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// holdServer is a workload that accepts connections and never reads,
// writes or closes them, like PostgreSQL in the middle of SELECT
// pg_sleep(3600).
func holdServer(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 64)
	t.Cleanup(func() {
		ln.Close()
		close(held)
		for c := range held {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	return ln.Addr().String()
}

// TestCloseWithHeldConnection: a client whose query keeps the workload
// busy cannot hold off Close, which the node's teardown runs before it
// erases the volumes.
func TestCloseWithHeldConnection(t *testing.T) {
	f := newFixture(t)
	// Not f.start: its cleanup would call Close again, and hang with it
	// when this test fails.
	s, err := Listen(Options{Addr: "127.0.0.1:0", Protocol: TLS, Backend: holdServer(t),
		TLS: &tls.Config{Certificates: []tls.Certificate{f.server}}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	c, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: f.pool, ServerName: "db.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("SELECT pg_sleep(3600)")); err != nil {
		t.Fatal(err)
	}
	for s.Stats().Served == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close still waits for a held connection after 5s")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the client's connection is still open after Close")
		}
	}
}

// TestIdleTimeout: a connection that carries nothing either way for the
// idle timeout is closed; one that keeps talking is not.
func TestIdleTimeout(t *testing.T) {
	f := newFixture(t)
	s := f.start(t, Options{Protocol: TLS, IdleTimeout: 400 * time.Millisecond})
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "db.test"}
	idle, err := tls.Dial("tcp", s.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy, err := tls.Dial("tcp", s.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	echoes(t, idle)
	t0 := time.Now()
	for time.Since(t0) < 1500*time.Millisecond {
		echoes(t, busy)
		time.Sleep(100 * time.Millisecond)
	}
	idle.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Fatal("the idle connection is still served")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the idle connection is still open after three times the idle timeout")
	}
	echoes(t, busy)
	if st := s.Stats(); st.Idle != 1 {
		t.Errorf("stats count %d idle closes, want 1", st.Idle)
	}
}

// TestGlobalLimit: past MaxConns from all sources together, connections
// are closed at once, whatever the per-source limit allows.
func TestGlobalLimit(t *testing.T) {
	f := newFixture(t)
	s := f.start(t, Options{Protocol: TLS, MaxPerSource: 100, MaxConns: 3})
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "db.test"}
	for i := 0; i < 3; i++ {
		c, err := tls.Dial("tcp", s.Addr().String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoes(t, c)
	}
	c, err := tls.Dial("tcp", s.Addr().String(), cfg)
	if err == nil {
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte("x"))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("a fourth connection was served with MaxConns 3")
		}
	}
	if st := s.Stats(); st.OverLimit == 0 || st.Limit != 3 {
		t.Errorf("stats: limit %d, %d over it; want 3 and at least 1", st.Limit, st.OverLimit)
	}
}
