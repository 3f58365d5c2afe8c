package ipsec

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// recorder is a Kernel that records deletions and accepts everything.
type recorder struct {
	mu      sync.Mutex
	deleted []uint32
}

func (r *recorder) AllocSPI(netip.Addr) (uint32, error)                  { return 0x999, nil }
func (r *recorder) AddInbound(netip.Addr, Generation, []byte) error      { return nil }
func (r *recorder) AddOutbound(netip.Addr, uint32, uint32, []byte) error { return nil }
func (r *recorder) Stats(netip.Addr, uint32) (SAStats, error)            { return SAStats{}, nil }
func (r *recorder) Dial(context.Context, netip.Addr, int) (net.Conn, error) {
	return nil, errUnreachable
}
func (r *recorder) Delete(_ netip.Addr, in uint32) error {
	r.mu.Lock()
	r.deleted = append(r.deleted, in)
	r.mu.Unlock()
	return nil
}

// TestResume: a restarted keying process takes the current generation
// and the older ones from the kernel's state, deletes one left without
// its outbound SA, and makes a new generation due at once.
func TestResume(t *testing.T) {
	k := &recorder{}
	m := &Manager{o: Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Grace: time.Minute}, k: k}
	p := &peerState{Peer: Peer{Name: "db-2", Addr: netip.MustParseAddr("10.0.0.2")}}
	now := time.Now()
	m.resume(p, []Generation{
		{Gen: 4, InSPI: 0x101, OutSPI: 0x201, Installed: now.Add(-time.Second), PeerBoot: "b"},
		{Gen: 5, InSPI: 0x100, OutSPI: 0x200, Installed: now, PeerBoot: "b", Current: true},
		{Gen: 6, InSPI: 0x102, PeerBoot: "b"},
	})
	if p.cur == nil || p.cur.Gen != 5 || len(p.old) != 1 || p.old[0].Gen != 4 || p.state != "up" || p.lastBoot != "b" {
		t.Fatalf("resumed: cur %+v, old %+v, state %q", p.cur, p.old, p.state)
	}
	if !slices.Equal(k.deleted, []uint32{0x102}) || !p.force {
		t.Errorf("deleted %x, force %v; want the half-installed generation deleted and a new one due", k.deleted, p.force)
	}
}

// TestRetireKeepsAtMostMaxOld: rekeys faster than the grace period leave
// at most maxOld older generations; the oldest go first.
func TestRetireKeepsAtMostMaxOld(t *testing.T) {
	k := &recorder{}
	m := &Manager{o: Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Grace: time.Hour}, k: k}
	p := &peerState{Peer: Peer{Name: "db-2", Addr: netip.MustParseAddr("10.0.0.2")}}
	for i := uint32(1); i <= 6; i++ {
		p.old = append(p.old, &Generation{Gen: uint64(i), InSPI: 0x100 + i, PeerBoot: "b"})
	}
	p.cur = &Generation{Gen: 7, InSPI: 0x107, Installed: time.Now(), PeerBoot: "b", Current: true}
	m.retire(p)
	var left []uint64
	for _, g := range p.old {
		left = append(left, g.Gen)
	}
	if !slices.Equal(left, []uint64{4, 5, 6}) || !slices.Equal(k.deleted, []uint32{0x101, 0x102, 0x103}) {
		t.Errorf("left %v, deleted %x; want 4 5 6 left and the three oldest deleted", left, k.deleted)
	}
}
