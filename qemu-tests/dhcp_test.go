package qemutests

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// TestDHCP4 boots a node configured for DHCPv4 against dnsmasq running on a
// test client: the node takes the leased address, the report shows it, and
// the server's host reaches the node there.
func TestDHCP4(t *testing.T) {
	n := harness.NewNet(t)
	server := n.AddClient("10.98.0.1/24")
	leases := filepath.Join(t.TempDir(), "leases")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dnsmasq := server.Command(ctx, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface=eth0", "--bind-interfaces", "--dhcp-leasefile="+leases,
		"--dhcp-range=10.98.0.100,10.98.0.119,255.255.255.0,10m", "--dhcp-option=option:router,10.98.0.1",
		"--dhcp-option=option:mtu,1400")
	dnsmasq.Stderr = os.Stderr
	if err := dnsmasq.Start(); err != nil {
		t.Fatal(err)
	}
	defer dnsmasq.Wait()
	defer cancel()

	vm := harness.Start(t, harness.Options{Name: "dhcp", Image: image(t), Config: example(t, "node-dhcp.json"), Net: n})
	vm.MustWaitFor(`^bulwark: ready$`, bootTimeout)
	l := vm.MustWaitFor(`^bulwark:   network .*\(dhcp\)`, time.Second)
	m := regexp.MustCompile(`eth0 (10\.98\.0\.1[01][0-9])/24 \(dhcp\) mtu 1400`).FindStringSubmatch(l.Text)
	if m == nil {
		t.Fatalf("report line %q lacks a leased address in the dhcp range with the offered MTU", l.Text)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer pcancel()
	if out, err := server.Command(pctx, "ping", "-c", "2", "-W", "5", m[1]).CombinedOutput(); err != nil {
		t.Fatalf("ping %s: %v\n%s", m[1], err, out)
	}
	if err := vm.PowerOff(offTimeout); err != nil {
		t.Fatal(err)
	}
}
