package ipsec

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// The ESP transform: AES-256-GCM with a 128-bit ICV (RFC 4106); the key
// material is 32 key bytes and a 4-byte salt.
const (
	aeadName   = "rfc4106(gcm(aes))"
	aeadKeyLen = 36
	icvBits    = 128
	// replayWindow is the anti-replay window, in packets (ESN).
	replayWindow = 1024
)

// Policy priorities: lower is stronger. The keying connection's bypass
// must win over the ESP requirement.
const (
	prioBypass = 100
	prioESP    = 200
)

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// policies installs, for one peer, the policies that require ESP for all
// traffic between the two addresses, except the TCP keying connection
// (and, for IPv6, ICMPv6, which carries neighbour discovery). outSPI is
// the SPI of the outbound SA the out policy uses; 0 before the first one.
func policies(self, peer netip.Addr, keyingPort int, outSPI uint32, reqid int) []*netlink.XfrmPolicy {
	var ps []*netlink.XfrmPolicy
	for _, dir := range []netlink.Dir{netlink.XFRM_DIR_OUT, netlink.XFRM_DIR_IN} {
		src, dst := self, peer
		if dir == netlink.XFRM_DIR_IN {
			src, dst = peer, self
		}
		// Bypass: the keying port, either end of the connection.
		for _, ports := range [][2]int{{0, keyingPort}, {keyingPort, 0}} {
			ps = append(ps, &netlink.XfrmPolicy{Src: hostNet(src), Dst: hostNet(dst), Proto: netlink.Proto(6),
				SrcPort: ports[0], DstPort: ports[1], Dir: dir, Priority: prioBypass, Action: netlink.XFRM_POLICY_ALLOW})
		}
		if self.Is6() {
			ps = append(ps, &netlink.XfrmPolicy{Src: hostNet(src), Dst: hostNet(dst), Proto: netlink.Proto(58),
				Dir: dir, Priority: prioBypass, Action: netlink.XFRM_POLICY_ALLOW})
		}
		tmpl := netlink.XfrmPolicyTmpl{Src: src.AsSlice(), Dst: dst.AsSlice(), Proto: netlink.XFRM_PROTO_ESP,
			Mode: netlink.XFRM_MODE_TRANSPORT, Reqid: reqid}
		if dir == netlink.XFRM_DIR_OUT {
			// Outbound names its SA: switching SAs is one policy update.
			tmpl.Spi = int(outSPI)
		}
		ps = append(ps, &netlink.XfrmPolicy{Src: hostNet(src), Dst: hostNet(dst), Dir: dir, Priority: prioESP,
			Action: netlink.XFRM_POLICY_ALLOW, Tmpls: []netlink.XfrmPolicyTmpl{tmpl}})
	}
	return ps
}

func installPolicies(ps []*netlink.XfrmPolicy) error {
	for _, p := range ps {
		if err := netlink.XfrmPolicyUpdate(p); err != nil {
			return fmt.Errorf("ipsec: policy %s %s -> %s: %w", p.Dir, p.Src, p.Dst, err)
		}
	}
	return nil
}

func removePolicies(ps []*netlink.XfrmPolicy) {
	for _, p := range ps {
		netlink.XfrmPolicyDel(p)
	}
}

// allocSPI asks the kernel for an unused SPI for SAs from src to dst: the
// receiving kernel chooses, so SPIs never collide on it. The result is a
// larval state that installState completes.
func allocSPI(src, dst netip.Addr, reqid int) (uint32, error) {
	st, err := netlink.XfrmStateAllocSpi(&netlink.XfrmState{Src: src.AsSlice(), Dst: dst.AsSlice(),
		Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT, Reqid: reqid})
	if err != nil {
		return 0, fmt.Errorf("ipsec: allocating an SPI: %w", err)
	}
	return uint32(st.Spi), nil
}

// installState installs (or completes) one SA. key is aeadKeyLen bytes.
func installState(src, dst netip.Addr, spi uint32, key []byte, reqid int) error {
	st := &netlink.XfrmState{
		Src: src.AsSlice(), Dst: dst.AsSlice(), Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT,
		Spi: int(spi), Reqid: reqid, ReplayWindow: replayWindow, ESN: true,
		Aead: &netlink.XfrmStateAlgo{Name: aeadName, Key: key, ICVLen: icvBits},
	}
	if err := netlink.XfrmStateUpdate(st); err != nil {
		if err2 := netlink.XfrmStateAdd(st); err2 != nil {
			return fmt.Errorf("ipsec: installing SA %s -> %s spi %#x: %v / %w", src, dst, spi, err, err2)
		}
	}
	return nil
}

func deleteState(src, dst netip.Addr, spi uint32) {
	netlink.XfrmStateDel(&netlink.XfrmState{Src: src.AsSlice(), Dst: dst.AsSlice(), Proto: netlink.XFRM_PROTO_ESP, Spi: int(spi)})
}

// stateStats returns the byte and packet counters of an SA.
func stateStats(src, dst netip.Addr, spi uint32) (bytes, packets uint64, err error) {
	st, err := netlink.XfrmStateGet(&netlink.XfrmState{Src: src.AsSlice(), Dst: dst.AsSlice(), Proto: netlink.XFRM_PROTO_ESP, Spi: int(spi)})
	if err != nil {
		return 0, 0, err
	}
	return st.Statistics.Bytes, st.Statistics.Packets, nil
}
