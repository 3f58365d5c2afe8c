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

// Policy priorities: lower is stronger. The neighbour-discovery bypass
// must win over the ESP requirement. (The keying sockets' bypass is a
// socket policy, which the kernel consults before the SPD: socket.go.)
const (
	prioBypass = 100
	prioESP    = 200
)

// ndTypes are the ICMPv6 messages of neighbour discovery (RFC 4861: router
// solicitation and advertisement, neighbour solicitation and
// advertisement, redirect). Without them in plaintext two IPv6 peers could
// not resolve each other's link-layer address to send the first ESP
// packet; every other ICMPv6 message (echo, errors) goes in ESP.
var ndTypes = []int{133, 134, 135, 136, 137}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// policies returns, for one peer, the policies that require ESP for all
// traffic between the two addresses, both ways, except (for IPv6) the
// neighbour-discovery messages. There is no port bypass: the keying
// connection's sockets carry their own bypass (bypassSocket). outSPI is
// the SPI of the outbound SA the out policy uses; 0 before the first one.
func policies(self, peer netip.Addr, outSPI uint32, reqid int) []*netlink.XfrmPolicy {
	var ps []*netlink.XfrmPolicy
	for _, dir := range []netlink.Dir{netlink.XFRM_DIR_OUT, netlink.XFRM_DIR_IN} {
		src, dst := self, peer
		if dir == netlink.XFRM_DIR_IN {
			src, dst = peer, self
		}
		if self.Is6() {
			// For ICMPv6 the selector's source port is the message
			// type (and the destination port the code).
			for _, typ := range ndTypes {
				ps = append(ps, &netlink.XfrmPolicy{Src: hostNet(src), Dst: hostNet(dst), Proto: netlink.Proto(58),
					SrcPort: typ, Dir: dir, Priority: prioBypass, Action: netlink.XFRM_POLICY_ALLOW})
			}
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
