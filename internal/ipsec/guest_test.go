//go:build guest

package ipsec

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// In the guest image: the kernel can install an rfc4106(gcm(aes)) SA with
// ESN and a 1024-packet replay window, and remove it. This is what fails
// when a module the ESP transform needs at run time (drbg, through seqiv)
// is missing from the image.
func TestGuestXfrmState(t *testing.T) {
	if os.Getenv("BULWARK_GUEST") != "1" {
		t.Fatal("guest tests run only inside the guest test image (see qemu-tests)")
	}
	src, dst := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	spi, err := allocSPI(src, dst, 7)
	if err != nil {
		t.Fatal(err)
	}
	if err := installState(src, dst, spi, make([]byte, aeadKeyLen), 7); err != nil {
		crypto, _ := os.ReadFile("/proc/crypto")
		var names []string
		for _, l := range strings.Split(string(crypto), "\n") {
			if strings.HasPrefix(l, "name") && (strings.Contains(l, "4106") || strings.Contains(l, "stdrng")) {
				names = append(names, strings.TrimSpace(l))
			}
		}
		t.Fatalf("%v\n/proc/crypto has: %s", err, strings.Join(names, "; "))
	}
	if _, _, err := stateStats(src, dst, spi); err != nil {
		t.Fatal(err)
	}
	deleteState(src, dst, spi)
	if _, _, err := stateStats(src, dst, spi); err == nil {
		t.Fatal("the SA is still there after deleteState")
	}
}

// In the guest image: the SA our own request installs (from a locked
// buffer, sa.go) reads back from the kernel exactly as the one the netlink
// library installs for the same XfrmState: algorithm, key, ICV, ESN,
// replay window, reqid, mode, limits; both for a larval inbound SPI
// (update) and a new outbound one (add). (The host's kernel may lack
// rfc4106, so this runs in the guest.)
func TestGuestInstallStateMatchesLibrary(t *testing.T) {
	if os.Getenv("BULWARK_GUEST") != "1" {
		t.Fatal("guest tests run only inside the guest test image (see qemu-tests)")
	}
	if err := compareSAs(t); err != nil {
		t.Fatal(err)
	}
}

func compareSAs(t *testing.T) error {
	self, peer := netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.12")
	key := bytes.Repeat([]byte{0xa5}, aeadKeyLen)
	const reqid = 1000
	// Ours: an inbound SA on an SPI the kernel allocated, and an outbound
	// one on an SPI of the peer's.
	inSPI, err := allocSPI(peer, self, reqid)
	if err != nil {
		return err
	}
	if err := installState(peer, self, inSPI, key, reqid); err != nil {
		return fmt.Errorf("inbound: %w", err)
	}
	if err := installState(self, peer, 0x4242, key, reqid); err != nil {
		return fmt.Errorf("outbound: %w", err)
	}
	// The library's, for the same state.
	lib := &netlink.XfrmState{Src: self.AsSlice(), Dst: peer.AsSlice(), Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT,
		Spi: 0x4343, Reqid: reqid, ReplayWindow: replayWindow, ESN: true,
		Aead: &netlink.XfrmStateAlgo{Name: aeadName, Key: key, ICVLen: icvBits}}
	if err := netlink.XfrmStateAdd(lib); err != nil {
		return fmt.Errorf("library: %w", err)
	}
	get := func(src, dst netip.Addr, spi uint32) (*netlink.XfrmState, error) {
		return netlink.XfrmStateGet(&netlink.XfrmState{Src: src.AsSlice(), Dst: dst.AsSlice(), Proto: netlink.XFRM_PROTO_ESP, Spi: int(spi)})
	}
	want, err := get(self, peer, 0x4343)
	if err != nil {
		return err
	}
	for _, c := range []struct {
		what     string
		src, dst netip.Addr
		spi      uint32
	}{{"inbound (update)", peer, self, inSPI}, {"outbound (add)", self, peer, 0x4242}} {
		got, err := get(c.src, c.dst, c.spi)
		if err != nil {
			return fmt.Errorf("%s: %w", c.what, err)
		}
		if got.Aead == nil || got.Aead.Name != want.Aead.Name || !bytes.Equal(got.Aead.Key, key) || got.Aead.ICVLen != want.Aead.ICVLen {
			t.Errorf("%s: AEAD %+v, want %+v", c.what, got.Aead, want.Aead)
		}
		if got.ESN != want.ESN || got.ReplayWindow != want.ReplayWindow || got.Reqid != want.Reqid || got.Mode != want.Mode ||
			got.Limits != want.Limits || got.Crypt != nil || got.Auth != nil {
			t.Errorf("%s: got\n%+v\nwant (the library's)\n%+v", c.what, got, want)
		}
	}
	return nil
}

// In the guest image: what PID1's XFRM accepts from a keying process. It
// installs only SAs for configured peers, under SPIs it reserved, with
// keys of the transform's length; an outbound SA only for a generation
// whose inbound SA is in, under an unreserved SPI not in use; it deletes
// only generations it installed, holds at most maxGenerations per peer,
// and at teardown removes every SA but keeps the policies.
func TestGuestXFRMChecks(t *testing.T) {
	if os.Getenv("BULWARK_GUEST") != "1" {
		t.Fatal("guest tests run only inside the guest test image (see qemu-tests)")
	}
	self, peer, stranger := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.9")
	if _, err := NewXFRM(self, 7443, []netip.Addr{peer, peer}); err == nil {
		t.Fatal("a duplicate peer was accepted")
	}
	x, err := NewXFRM(self, 7443, []netip.Addr{peer})
	if err != nil {
		t.Fatal(err)
	}
	defer x.RemovePolicies()
	key := make([]byte, aeadKeyLen)
	mustFail := func(what string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", what, err, want)
		}
	}
	_, err = x.AllocSPI(stranger)
	mustFail("an SPI for a non-peer", err, "not a peer")
	mustFail("an inbound SA under an SPI never reserved", x.AddInbound(peer, Generation{Gen: 1, InSPI: 0x1234}, key), "not reserved")
	spi, err := x.AllocSPI(peer)
	if err != nil {
		t.Fatal(err)
	}
	mustFail("a short key", x.AddInbound(peer, Generation{Gen: 1, InSPI: spi}, key[:16]), "a key of 16 bytes")
	mustFail("generation 0", x.AddInbound(peer, Generation{InSPI: spi}, key), "generation 0")
	mustFail("a long peer boot id", x.AddInbound(peer, Generation{Gen: 1, InSPI: spi, PeerBoot: strings.Repeat("b", 65)}, key), "refused")
	if err := x.AddInbound(peer, Generation{Gen: 1, InSPI: spi, PeerBoot: "boot-a"}, key); err != nil {
		t.Fatal(err)
	}
	mustFail("the same SPI twice", x.AddInbound(peer, Generation{Gen: 1, InSPI: spi}, key), "not reserved")
	mustFail("an outbound SA for no generation", x.AddOutbound(peer, spi+1, 0x5000, key), "no generation")
	mustFail("a reserved outbound SPI", x.AddOutbound(peer, spi, 200, key), "reserved")
	if err := x.AddOutbound(peer, spi, 0x5000, key); err != nil {
		t.Fatal(err)
	}
	mustFail("a second outbound SA", x.AddOutbound(peer, spi, 0x5001, key), "has its outbound SA")
	gens := x.Generations(peer)
	if len(gens) != 1 || !gens[0].Current || gens[0].OutSPI != 0x5000 || gens[0].PeerBoot != "boot-a" {
		t.Fatalf("generations: %+v", gens)
	}
	if _, err := x.Stats(peer, spi); err != nil {
		t.Fatal(err)
	}
	spi2, err := x.AllocSPI(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.AddInbound(peer, Generation{Gen: 2, InSPI: spi2}, key); err != nil {
		t.Fatal(err)
	}
	mustFail("an outbound SPI in use", x.AddOutbound(peer, spi2, 0x5000, key), "in use")
	mustFail("deleting a generation never installed", x.Delete(peer, 0x77), "no generation")
	if err := x.Delete(peer, spi); err != nil {
		t.Fatal(err)
	}
	if _, _, err := stateStats(peer, self, spi); err == nil {
		t.Error("the deleted generation's inbound SA is still in the kernel")
	}
	if _, _, err := stateStats(self, peer, 0x5000); err == nil {
		t.Error("the deleted generation's outbound SA is still in the kernel")
	}
	for i := len(x.Generations(peer)); i < maxGenerations; i++ {
		s, err := x.AllocSPI(peer)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.AddInbound(peer, Generation{Gen: uint64(10 + i), InSPI: s}, key); err != nil {
			t.Fatal(err)
		}
	}
	s, err := x.AllocSPI(peer)
	if err != nil {
		t.Fatal(err)
	}
	mustFail("a generation past the limit", x.AddInbound(peer, Generation{Gen: 99, InSPI: s}, key), "installed already")
	installed := x.Generations(peer)
	x.RemoveSAs()
	for _, g := range installed {
		if _, _, err := stateStats(peer, self, g.InSPI); err == nil {
			t.Errorf("SA %#x is still in the kernel after RemoveSAs", g.InSPI)
		}
	}
	pols, err := netlink.XfrmPolicyList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	esp := 0
	for _, p := range pols {
		if len(p.Tmpls) == 1 && p.Tmpls[0].Proto == netlink.XFRM_PROTO_ESP {
			esp++
		}
	}
	if esp != 2 {
		t.Errorf("%d ESP policies after RemoveSAs, want 2 (in and out)", esp)
	}
}
