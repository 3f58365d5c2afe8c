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
