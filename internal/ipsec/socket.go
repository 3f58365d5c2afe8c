package ipsec

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The keying connection must cross in plaintext (it is what makes the
// ESP keys), but nothing else between two peers may. An address/port
// bypass in the SPD cannot tell the keying sockets from any other packet
// with the same ports: a host spoofing a peer's address with source port
// 7443 reached every port of the node, and a local process bound to 7443
// could talk plaintext to any port of a peer. So the bypass is a
// per-socket policy (IP_XFRM_POLICY / IPV6_XFRM_POLICY) on the keying
// sockets alone, as IKE daemons do for their own sockets: the kernel
// consults a socket's policy before the SPD, for its packets only. A
// listener's policy is copied to the connections it accepts, and to the
// SYN-ACKs it answers with.

// The socket policy's selector is the keying connection itself (TCP, the
// keying port, and for a dialer the peer's address): a socket PID1 made
// for the keying process and that the process connected elsewhere, or
// any packet of it that is not the keying connection's, does not match,
// and the kernel then applies the SPD (ESP required) as for any socket.

// bypassListen is a net.ListenConfig Control function that puts the
// bypass on the keying listener: TCP from and to the local keying port.
// The connections it accepts inherit it.
func bypassListen(port int) func(string, string, syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		return setBypass(network, c, netip.Addr{}, port)
	}
}

// bypassDial is the same for a socket that connects to peer's keying
// port.
func bypassDial(peer netip.Addr, port int) func(string, string, syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		return setBypass(network, c, peer, port)
	}
}

// setBypass sets the allow-without-transform policies, in and out, on the
// socket c, before its first packet. peer is the remote address for a
// dialing socket, invalid for the listener.
func setBypass(network string, c syscall.RawConn, peer netip.Addr, port int) error {
	level, opt, family := unix.IPPROTO_IP, unix.IP_XFRM_POLICY, uint16(unix.AF_INET)
	if network == "tcp6" {
		level, opt, family = unix.IPPROTO_IPV6, unix.IPV6_XFRM_POLICY, unix.AF_INET6
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, dir := range []uint8{uint8(netlink.XFRM_DIR_IN), uint8(netlink.XFRM_DIR_OUT)} {
			p := bypassPolicy(keyingSelector(family, dir, peer, port), dir)
			// The kernel reads the struct as it is laid out in memory;
			// Serialize gives exactly those bytes.
			if serr = unix.SetsockoptString(int(fd), level, opt, string(p.Serialize())); serr != nil {
				serr = fmt.Errorf("ipsec: bypass policy (dir %d) on the keying socket: %w", dir, serr)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// keyingSelector matches the keying connection's packets in direction
// dir: TCP, the local keying port for the listener's connections, the
// peer's address and keying port for a dialer's.
func keyingSelector(family uint16, dir uint8, peer netip.Addr, port int) nl.XfrmSelector {
	sel := nl.XfrmSelector{Family: family, Proto: unix.IPPROTO_TCP}
	out := dir == uint8(netlink.XFRM_DIR_OUT)
	switch {
	case !peer.IsValid() && out: // listener: from its port
		sel.Sport, sel.SportMask = be16(port), 0xffff
	case !peer.IsValid(): // listener: to its port
		sel.Dport, sel.DportMask = be16(port), 0xffff
	case out: // dialer: to the peer's keying port
		sel.Daddr.FromIP(peer.AsSlice())
		sel.PrefixlenD = uint8(peer.BitLen())
		sel.Dport, sel.DportMask = be16(port), 0xffff
	default: // dialer: from the peer's keying port
		sel.Saddr.FromIP(peer.AsSlice())
		sel.PrefixlenS = uint8(peer.BitLen())
		sel.Sport, sel.SportMask = be16(port), 0xffff
	}
	return sel
}

// be16 is port as the kernel's __be16 field holds it in memory.
func be16(port int) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], uint16(port))
	return binary.NativeEndian.Uint16(b[:])
}

// bypassPolicy is a socket policy that allows what sel matches with no
// template, that is without ESP.
func bypassPolicy(sel nl.XfrmSelector, dir uint8) *nl.XfrmUserpolicyInfo {
	p := &nl.XfrmUserpolicyInfo{Sel: sel, Dir: dir, Action: uint8(netlink.XFRM_POLICY_ALLOW), Priority: prioBypass}
	p.Lft.SoftByteLimit = nl.XFRM_INF
	p.Lft.HardByteLimit = nl.XFRM_INF
	p.Lft.SoftPacketLimit = nl.XFRM_INF
	p.Lft.HardPacketLimit = nl.XFRM_INF
	return p
}
