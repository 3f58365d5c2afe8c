package ipsec

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/safego/safegotest"
)

// syncBuf is a log sink the test reads while the manager writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) waitFor(t *testing.T, text string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		found := strings.Contains(s.b.String(), text)
		s.mu.Unlock()
		if found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log never says %q", text)
		}
	}
}

// loopsOnly is a manager whose loops run on loopback without touching the
// kernel's XFRM state: its one peer (127.0.0.2) has no keying listener, so
// every keying attempt fails at the dial, and its keying port accepts
// connections from 127.0.0.1, which is no peer. It stops the loops as
// Close does, without removing any policy, when stop is called or the
// test ends.
func loopsOnly(t *testing.T) (m *Manager, logs *syncBuf, stop func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs = &syncBuf{}
	m = &Manager{
		o: Options{Self: netip.MustParseAddr("127.0.0.1"), KeyingPort: 1, Rekey: time.Hour, Grace: time.Second,
			Log: slog.New(slog.NewTextHandler(logs, nil))},
		done: make(chan struct{}), ln: ln, tls: &tls.Config{}, k: unreachable{},
	}
	m.peers = []*peerState{{Peer: Peer{Name: "peer.test", Addr: netip.MustParseAddr("127.0.0.2")},
		state: "connecting", kick: make(chan struct{}, 1), want: make(chan want, 1)}}
	m.startLoops()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			stopped := make(chan struct{})
			go func() { m.stopLoops(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				t.Error("the manager's loops did not stop within 5s")
			}
		})
	}
	t.Cleanup(stop)
	return m, logs, stop
}

// TestPanicInRunLoop: a peer's keying loop runs again after a panic, and
// the manager still stops (its wait group counts the loop once).
func TestPanicInRunLoop(t *testing.T) {
	ch := safegotest.Reports(t, 16)
	runs := safegotest.PanicOnce(t, &testHookRun)
	m, _, stop := loopsOnly(t)
	if r := safegotest.ExpectReport(t, ch, "peer.test"); r.Restart != time.Second {
		t.Errorf("the keying loop runs again in %s, want 1s", r.Restart)
	}
	for deadline := time.Now().Add(5 * time.Second); runs.Load() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the keying loop did not run again after its panic")
		}
	}
	// The loop is keying again: its attempt fails at the dial.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if st := m.Status(); strings.HasPrefix(st[0].State, "down: keying connection") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer state %q after the restart", m.Status()[0].State)
		}
	}
	t0 := time.Now()
	stop()
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("stopping took %s", d)
	}
}

// TestPanicInAcceptLoop: the keying port's accept loop runs again after a
// panic and serves.
func TestPanicInAcceptLoop(t *testing.T) {
	ch := safegotest.Reports(t, 16)
	safegotest.PanicOnce(t, &testHookAccept)
	m, logs, _ := loopsOnly(t)
	if r := safegotest.ExpectReport(t, ch, "accept"); r.Restart != time.Second {
		t.Errorf("the accept loop runs again in %s, want 1s", r.Restart)
	}
	c, err := net.Dial("tcp", m.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	logs.waitFor(t, "keying connection from a non-peer")
}

// TestPanicInServe: a panic while one keying connection is served closes
// that connection; the next is served.
func TestPanicInServe(t *testing.T) {
	ch := safegotest.Reports(t, 16)
	safegotest.PanicOnce(t, &testHookServe)
	m, logs, _ := loopsOnly(t)
	c, err := net.Dial("tcp", m.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	safegotest.ExpectReport(t, ch, "keying connection")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the keying connection whose goroutine panicked is still open")
	}
	c.Close()
	c, err = net.Dial("tcp", m.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	logs.waitFor(t, "keying connection from a non-peer")
}

// unreachable is a Kernel whose peer never answers: the loops' tests need
// no SA.
type unreachable struct{}

var errUnreachable = errors.New("the peer is unreachable (test)")

func (unreachable) AllocSPI(netip.Addr) (uint32, error)                  { return 0, errUnreachable }
func (unreachable) AddInbound(netip.Addr, Generation, []byte) error      { return errUnreachable }
func (unreachable) AddOutbound(netip.Addr, uint32, uint32, []byte) error { return errUnreachable }
func (unreachable) Delete(netip.Addr, uint32) error                      { return errUnreachable }
func (unreachable) Stats(netip.Addr, uint32) (SAStats, error)            { return SAStats{}, errUnreachable }
func (unreachable) Dial(context.Context, netip.Addr, int) (net.Conn, error) {
	return nil, errUnreachable
}
