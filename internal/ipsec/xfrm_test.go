package ipsec

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
)

// The SPD must let nothing between two peers cross without ESP except
// IPv6 neighbour discovery: no TCP port (the keying connection's bypass is
// per socket, see socket.go), no other ICMPv6 message.
func TestPoliciesBypassOnlyNeighbourDiscovery(t *testing.T) {
	for _, c := range []struct {
		self, peer string
		wantND     bool
	}{{"10.0.0.1", "10.0.0.2", false}, {"fd00::1", "fd00::2", true}} {
		self, peer := netip.MustParseAddr(c.self), netip.MustParseAddr(c.peer)
		nd := map[netlink.Dir]map[int]bool{netlink.XFRM_DIR_IN: {}, netlink.XFRM_DIR_OUT: {}}
		esp := map[netlink.Dir]bool{}
		for _, p := range policies(self, peer, 0x1234, 1000) {
			if len(p.Tmpls) > 0 {
				if p.Proto != 0 || p.SrcPort != 0 || p.DstPort != 0 {
					t.Errorf("%s: the ESP policy is narrowed to proto %d ports %d/%d", c.self, p.Proto, p.SrcPort, p.DstPort)
				}
				esp[p.Dir] = true
				continue
			}
			// A policy without a template lets packets through in
			// plaintext: only ICMPv6 neighbour discovery may.
			if p.Proto != 58 || p.SrcPort < 133 || p.SrcPort > 137 || p.DstPort != 0 {
				t.Errorf("%s: a plaintext bypass in the SPD: dir %v proto %d src port/type %d dst port/code %d", c.self, p.Dir, p.Proto, p.SrcPort, p.DstPort)
				continue
			}
			nd[p.Dir][p.SrcPort] = true
		}
		for _, d := range []netlink.Dir{netlink.XFRM_DIR_IN, netlink.XFRM_DIR_OUT} {
			if !esp[d] {
				t.Errorf("%s: no ESP policy for dir %v", c.self, d)
			}
			if c.wantND && len(nd[d]) != 5 {
				t.Errorf("%s: dir %v: neighbour discovery types bypassed: %v, want 133-137", c.self, d, nd[d])
			}
		}
	}
}

// TestKeyingConnectionLimit: at most maxKeyingConnsPerPeer connections
// from one address and maxKeyingConns in all are admitted; a released one
// makes room again.
func TestKeyingConnectionLimit(t *testing.T) {
	var m Manager
	a := netip.MustParseAddr("10.0.0.2")
	for i := 0; i < maxKeyingConnsPerPeer; i++ {
		if !m.admit(a) {
			t.Fatalf("connection %d from one peer refused", i+1)
		}
	}
	if m.admit(a) {
		t.Fatal("one more connection from the same address admitted")
	}
	m.release(a)
	if !m.admit(a) {
		t.Fatal("a released connection made no room")
	}
	n := maxKeyingConnsPerPeer
	for i := 0; n < maxKeyingConns; i++ {
		if !m.admit(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})) {
			t.Fatalf("refused at %d connections in all", n)
		}
		n++
	}
	if m.admit(netip.MustParseAddr("10.9.9.9")) {
		t.Fatalf("admitted past %d connections in all", maxKeyingConns)
	}
}
