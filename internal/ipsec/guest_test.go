//go:build guest

package ipsec

import (
	"net/netip"
	"os"
	"strings"
	"testing"
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
