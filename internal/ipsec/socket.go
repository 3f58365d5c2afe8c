package ipsec

import (
	"fmt"
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

// bypassSocket sets an allow-without-transform policy, in and out, on the
// socket c. It is a net.ListenConfig / net.Dialer Control function, so the
// policy is in place before the first packet.
func bypassSocket(network, _ string, c syscall.RawConn) error {
	level, opt, family := unix.IPPROTO_IP, unix.IP_XFRM_POLICY, uint16(unix.AF_INET)
	if network == "tcp6" {
		level, opt, family = unix.IPPROTO_IPV6, unix.IPV6_XFRM_POLICY, unix.AF_INET6
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, dir := range []uint8{uint8(netlink.XFRM_DIR_IN), uint8(netlink.XFRM_DIR_OUT)} {
			p := bypassPolicy(family, dir)
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

// bypassPolicy is a socket policy that matches every packet of the socket
// (an empty selector of the family) and allows it with no template, that
// is without ESP.
func bypassPolicy(family uint16, dir uint8) *nl.XfrmUserpolicyInfo {
	p := &nl.XfrmUserpolicyInfo{Dir: dir, Action: uint8(netlink.XFRM_POLICY_ALLOW), Priority: prioBypass}
	p.Sel.Family = family
	p.Lft.SoftByteLimit = nl.XFRM_INF
	p.Lft.HardByteLimit = nl.XFRM_INF
	p.Lft.SoftPacketLimit = nl.XFRM_INF
	p.Lft.HardPacketLimit = nl.XFRM_INF
	return p
}
