package qemutests

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// A host on the bridge takes db-2's address and sends TCP SYNs from the
// keying port (7443) to db-1's peer port and client port. Only the keying
// sockets themselves may speak plaintext between peers, so db-1 must
// answer nothing in plaintext toward db-2's address (its NIC is
// captured), while the real nodes still key and rekey.
func TestIPsecSpoofedKeyingPort(t *testing.T) {
	img := testImage(t)
	ctlBin := buildCtl(t)
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	robot, _ := ca.IssueClient("robot", pki.RoleControlPlane, "", 0)
	os.WriteFile(filepath.Join(dir, "robot.pem"), robot.CertPEM, 0o644)
	os.WriteFile(filepath.Join(dir, "robot.key"), robot.KeyPEM, 0o600)

	n := harness.NewNet(t)
	ops := n.AddClient("10.99.0.5/24")
	// db-1 listens on its client port (5432) and its peer port (5433), so
	// that a SYN that got through would be answered with a SYN-ACK; a
	// closed port would answer with a reset, which counts as well.
	cfg1 := ipsecNode(t, ca, "db-1", "10.99.0.10", [][2]string{{"db-2", "10.99.0.11"}}, []string{"-listen", "5432,5433"})
	cfg2 := ipsecNode(t, ca, "db-2", "10.99.0.11", [][2]string{{"db-1", "10.99.0.10"}}, []string{"-listen", "5433"})
	vm1 := harness.Start(t, harness.Options{Name: "db-1", Image: img, Config: cfg1, Net: n, MAC: "52:54:00:00:00:10"})
	vm2 := harness.Start(t, harness.Options{Name: "db-2", Image: img, Config: cfg2, Net: n, MAC: "52:54:00:00:00:11"})
	pcap := filepath.Join(dir, "db-1.pcap")
	stop := vm1.Capture(pcap)
	vm1.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	vm2.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	vm1.MustWaitFor(`^bulwark: keying: ipsec: SAs installed peer=db-2 gen=1 `, 2*time.Minute)

	// The spoofer: db-2's address on the same bridge, in a subnet, so
	// that its packets really reach db-1. It neither asks (db-1's MAC is
	// written in) nor answers ARP, so db-1 keeps sending to the real
	// db-2: an ARP request from the spoofer would carry db-2's address
	// with the spoofer's MAC and take db-2's traffic, keying included.
	spoofer := n.AddClient("10.99.0.11/24")
	for _, args := range [][]string{
		{"netns", "exec", spoofer.NS, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=8", "net.ipv4.conf.eth0.arp_ignore=8"},
		{"-n", spoofer.NS, "neigh", "replace", "10.99.0.10", "lladdr", "52:54:00:00:00:10", "dev", "eth0", "nud", "permanent"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	var results []string
	for _, port := range []int{5433, 5432} {
		err := spoofer.Do(func() error {
			d := net.Dialer{
				Timeout:   3 * time.Second,
				LocalAddr: &net.TCPAddr{IP: net.ParseIP("10.99.0.11"), Port: 7443},
				// The spoofer reuses its source port for each try.
				Control: func(_, _ string, c syscall.RawConn) error {
					return c.Control(func(fd uintptr) {
						unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
					})
				},
			}
			c, err := d.DialContext(context.Background(), "tcp4", fmt.Sprintf("10.99.0.10:%d", port))
			if err == nil {
				c.Close()
				return fmt.Errorf("a plaintext connection from 10.99.0.11:7443 to db-1 port %d was accepted", port)
			}
			results = append(results, fmt.Sprintf("port %d: %v", port, err))
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("spoofed SYNs from source port 7443: %s", strings.Join(results, "; "))

	// Keying and rekeying between the real nodes still work.
	op := operator{t: t, from: ops, bin: ctlBin, dir: dir, caFile: filepath.Join(dir, "ca", "ca.pem")}
	for gen := 2; gen <= 3; gen++ {
		if out, code := op.run("robot", "ipsec", "rekey"); code != 0 {
			t.Fatalf("rekey: exit %d\n%s", code, out)
		}
		vm1.MustWaitFor(fmt.Sprintf(`^bulwark: keying: ipsec: SAs installed peer=db-2 gen=%d `, gen), time.Minute)
	}
	stop()

	count := func(filter string) (int, string) {
		out, err := exec.Command("tcpdump", "-n", "-r", pcap, filter).Output()
		if err != nil {
			t.Fatalf("tcpdump -r %s %q: %v", pcap, filter, err)
		}
		return strings.Count(string(out), "\n"), string(out)
	}
	// Any plaintext TCP segment from db-1's client or peer port toward
	// db-2's address is an answer to the spoofer: the real db-2 never
	// connects to those ports without ESP.
	answers, text := count("ip src 10.99.0.10 and ip dst 10.99.0.11 and tcp and (tcp src port 5432 or tcp src port 5433)")
	spoofed, _ := count("ip src 10.99.0.11 and ip dst 10.99.0.10 and tcp src port 7443 and (tcp dst port 5432 or tcp dst port 5433)")
	keying, _ := count("ip and host 10.99.0.10 and host 10.99.0.11 and tcp port 7443")
	esp, _ := count("ip and host 10.99.0.10 and host 10.99.0.11 and esp")
	t.Logf("db-1's capture: %d spoofed SYNs in, %d plaintext answers out, %d keying segments, %d ESP packets", spoofed, answers, keying, esp)
	if spoofed == 0 {
		t.Errorf("the spoofed SYNs never reached db-1's NIC: the test proves nothing")
	}
	if answers != 0 {
		t.Errorf("db-1 answered the spoofer in plaintext:\n%s", text)
	}
	if keying == 0 {
		t.Errorf("no keying traffic in the capture")
	}
}
