package qemutests

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// ipsecNode is one node's config for the IPsec test.
func ipsecNode(t testing.TB, ca *pki.CA, name, addr string, peers [][2]string, workload []string) []byte {
	t.Helper()
	node, err := ca.IssueNode(pki.NodeRequest{Name: name, IPs: []net.IP{net.ParseIP(addr)}})
	if err != nil {
		t.Fatal(err)
	}
	var ps []map[string]string
	for _, p := range peers {
		ps = append(ps, map[string]string{"name": p[0], "address": p[1]})
	}
	doc := map[string]any{
		"version":  1,
		"hostname": name,
		"network":  map[string]any{"interfaces": []map[string]any{{"name": "eth0", "addresses": []string{addr + "/24"}}}},
		"firewall": map[string]any{"client_ports": []int{5432}, "peer_ports": []int{5433}, "management_sources": []string{"10.99.0.5"}},
		"tls":      map[string]string{"ca": string(ca.PEM), "certificate": string(node.CertPEM), "key": string(node.KeyPEM)},
		"ipsec":    map[string]any{"address": addr, "peers": ps, "grace_seconds": 2},
		"workload": map[string]any{"command": append([]string{testBin + "/netprobe"}, workload...), "uid": 999, "gid": 999},
	}
	b, _ := json.Marshal(doc)
	return b
}

// Three nodes of a service and a fourth with another CA's certificate,
// every node's NIC captured: traffic between any two nodes is ESP only and
// carries no plaintext, the stranger never gets SAs and cannot reach the
// internal port, spoofed plaintext is dropped, a stream and a ping between
// two nodes survive 20 forced rekeys and three restarts of a keying
// process without loss or reset, and a peer that reboots is keyed again
// with its old SAs gone at once.
func TestIPsec(t *testing.T) {
	img := testImage(t)
	ctlBin := buildCtl(t)
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.Init(filepath.Join(dir, "other"), "evil", "")
	robot, _ := ca.IssueClient("robot", pki.RoleControlPlane, "", 0)
	os.WriteFile(filepath.Join(dir, "robot.pem"), robot.CertPEM, 0o644)
	os.WriteFile(filepath.Join(dir, "robot.key"), robot.KeyPEM, 0o600)
	m := make([]byte, 12)
	rand.Read(m)
	marker := "BULWARK-IPSEC-MARKER-" + hex.EncodeToString(m) + "-"

	all := [][2]string{{"db-1", "10.99.0.10"}, {"db-2", "10.99.0.11"}, {"db-3", "10.99.0.12"}, {"db-4", "10.99.0.13"}}
	peersOf := func(self string) [][2]string {
		var out [][2]string
		for _, p := range all {
			if p[0] != self {
				out = append(out, p)
			}
		}
		return out
	}
	stream := func(to string) []string {
		return []string{"-sink", ":5433", "-stream", to + ":5433", "-marker", marker, "-seconds", "90"}
	}
	n := harness.NewNet(t)
	ops := n.AddClient("10.99.0.5/24")
	cfg1 := ipsecNode(t, ca, "db-1", "10.99.0.10", peersOf("db-1"), append(stream("10.99.0.11"), "-ping", "10.99.0.11"))
	cfg2 := ipsecNode(t, ca, "db-2", "10.99.0.11", peersOf("db-2"), stream("10.99.0.12"))
	cfg3 := ipsecNode(t, ca, "db-3", "10.99.0.12", peersOf("db-3"), stream("10.99.0.10"))
	// The stranger claims to be db-4, with a certificate of another CA.
	cfg4 := ipsecNode(t, other, "db-4", "10.99.0.13", peersOf("db-4"), []string{"-connect", "10.99.0.10:5433,10.99.0.11:5433,10.99.0.12:5433"})

	vm1 := harness.Start(t, harness.Options{Name: "db-1", Image: img, Config: cfg1, Net: n, MAC: "52:54:00:00:00:10"})
	vm2 := harness.Start(t, harness.Options{Name: "db-2", Image: img, Config: cfg2, Net: n, MAC: "52:54:00:00:00:11"})
	vm3 := harness.Start(t, harness.Options{Name: "db-3", Image: img, Config: cfg3, Net: n, MAC: "52:54:00:00:00:12"})
	vm4 := harness.Start(t, harness.Options{Name: "db-4", Image: img, Config: cfg4, Net: n, MAC: "52:54:00:00:00:13"})
	var stops []func()
	for i, vm := range []*harness.VM{vm1, vm2, vm3} {
		stops = append(stops, vm.Capture(filepath.Join(dir, fmt.Sprintf("db-%d.pcap", i+1))))
	}
	for _, vm := range []*harness.VM{vm1, vm2, vm3, vm4} {
		vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	}
	t0 := time.Now()
	vm1.MustWaitFor(`^bulwark: keying: ipsec: SAs installed peer=db-2 gen=1 `, 2*time.Minute)
	vm1.MustWaitFor(`^bulwark: keying: ipsec: SAs installed peer=db-3 gen=1 `, 2*time.Minute)
	vm2.MustWaitFor(`^bulwark: keying: ipsec: SAs installed peer=db-3 gen=1 `, 2*time.Minute)
	t.Logf("SAs between the three nodes installed %s after all were ready", time.Since(t0).Round(100*time.Millisecond))
	vm1.MustWaitFor(`^bulwark: workload: netprobe: stream to 10\.99\.0\.11:5433: connected$`, time.Minute)
	vm1.MustWaitFor(`^bulwark: workload: netprobe: ping 10\.99\.0\.11: answered, counting$`, time.Minute)

	// The stranger: refused at the keying handshake, and its plaintext
	// connections to the internal port go nowhere.
	vm1.MustWaitFor(`^bulwark: WARN: keying: ipsec: keying (handshake refused|failed) .*peer=db-4`, time.Minute)
	vm4.MustWaitFor(`^bulwark: workload: netprobe: outbound 10\.99\.0\.12:5433: `, 2*time.Minute)
	for _, l := range vm4.Lines() {
		if strings.Contains(l.Text, "netprobe: outbound") && strings.HasSuffix(l.Text, ": connected") {
			t.Errorf("the stranger connected: %s", l.Text)
		}
		if strings.Contains(l.Text, "ipsec: SAs installed") {
			t.Errorf("the stranger got SAs: %s", l.Text)
		}
	}

	// 20 forced rekeys while the stream runs.
	op := operator{t: t, from: ops, bin: ctlBin, dir: dir, caFile: filepath.Join(dir, "ca", "ca.pem")}
	for i := 2; i <= 21; i++ {
		if out, code := op.run("robot", "ipsec", "rekey"); code != 0 {
			t.Fatalf("rekey %d: exit %d\n%s", i, code, out)
		}
		vm1.MustWaitFor(fmt.Sprintf(`^bulwark: keying: ipsec: SAs installed peer=db-2 gen=%d `, i), time.Minute)
	}
	// db-1's keying process is killed, made to panic and made to call a
	// system call its filter forbids, while the stream and the ping run:
	// the SAs are PID1's and stay (the ping below loses nothing), the
	// process comes back unprivileged each time, and it goes on from the
	// generations the kernel holds: the next rekey is generation 22.
	for i, c := range []struct{ hook, exit string }{
		{"kill", "killed by signal killed"},
		{"panic", "exited with status 2"},
		{"forbidden-syscall", "killed by signal bad system call"},
	} {
		res, err := op.testHook("robot", "keying", c.hook)
		t.Logf("keying hook %s: %s %v", c.hook, res, err)
		vm1.MustWaitFor(`^bulwark: WARN: service keying: `+c.exit+`; restarting in `, time.Minute)
		back := regexp.MustCompile(fmt.Sprintf(`service keying: running, pid \d+, uid 61003, no capabilities, no_new_privs 1, seccomp 2, landlock [^,]+, %d restarts`, i+1))
		var out string
		for t0 := time.Now(); time.Since(t0) < time.Minute; time.Sleep(time.Second) {
			if out, _ = op.run("robot", "status"); back.MatchString(out) && strings.Contains(out, "ipsec peer db-2 10.99.0.11: up, generation 21,") {
				break
			}
		}
		if !back.MatchString(out) || !strings.Contains(out, "ipsec peer db-2 10.99.0.11: up, generation 21,") {
			t.Fatalf("after keying hook %s: the keying process is not back with generation 21 for db-2:\n%s", c.hook, out)
		}
	}
	if out, code := op.run("robot", "ipsec", "rekey"); code != 0 {
		t.Fatalf("rekey after the keying restarts: exit %d\n%s", code, out)
	}
	vm1.MustWaitFor(`^bulwark: keying: ipsec: SAs installed peer=db-2 gen=22 `, time.Minute)
	out, _ := op.run("robot", "status")
	t.Logf("status after the rekeys and the keying restarts:\n%s", out)
	if !regexp.MustCompile(`ipsec peer db-2 10\.99\.0\.11: up, generation 22`).MatchString(out) {
		t.Errorf("status does not show generation 22 for db-2:\n%s", out)
	}
	for _, c := range []struct {
		vm       *harness.VM
		to, sink string
		sinkVM   *harness.VM
	}{{vm1, "11", "10", vm2}, {vm2, "12", "11", vm3}, {vm3, "10", "12", vm1}} {
		c.vm.MustWaitFor(`^bulwark: workload: netprobe: stream to 10\.99\.0\.`+c.to+`:5433: done, \d+ bytes sent, no errors, [0-9.]+ MiB/s$`, 3*time.Minute)
		c.sinkVM.MustWaitFor(`^bulwark: workload: netprobe: sink received \d+ bytes from 10\.99\.0\.`+c.sink+`:\d+ \(<nil>\)$`, time.Minute)
	}
	l := vm1.MustWaitFor(`^bulwark: workload: netprobe: ping 10\.99\.0\.11: \d+ sent, \d+ answered, \d+ lost$`, 3*time.Minute)
	t.Log(l.Text)
	if !strings.HasSuffix(l.Text, " 0 lost") {
		t.Errorf("pings were lost across the rekeys: %s", l.Text)
	}
	for _, stop := range stops {
		stop()
	}

	// The captures: between any two nodes' addresses, ESP and nothing else
	// but the keying connection (ARP is not IP and carries no data), and no
	// marker anywhere.
	for _, c := range []struct{ pcap, a, b string }{
		{"db-1.pcap", "10.99.0.10", "10.99.0.11"}, {"db-1.pcap", "10.99.0.10", "10.99.0.12"}, {"db-2.pcap", "10.99.0.11", "10.99.0.12"},
	} {
		pcap := filepath.Join(dir, c.pcap)
		count := func(filter string) (int, string) {
			out, err := exec.Command("tcpdump", "-n", "-r", pcap, filter).Output()
			if err != nil {
				t.Fatalf("tcpdump -r %s: %v", pcap, err)
			}
			return bytes.Count(out, []byte("\n")), string(out)
		}
		pair := "ip and host " + c.a + " and host " + c.b
		esp, _ := count(pair + " and esp")
		plain, text := count(pair + " and not esp and not tcp port 7443")
		t.Logf("%s: %d ESP packets between %s and %s, %d others (keying excluded)", c.pcap, esp, c.a, c.b, plain)
		if esp < 100 || plain != 0 {
			t.Errorf("%s: want ESP only between %s and %s: %d ESP, %d others:\n%s", c.pcap, c.a, c.b, esp, plain, text)
		}
	}
	for i := 1; i <= 3; i++ {
		raw, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("db-%d.pcap", i)))
		if bytes.Contains(raw, []byte(marker)) {
			t.Errorf("the marker is in db-%d's capture in plaintext", i)
		}
	}

	// Spoofed plaintext from a test client using db-2's address is dropped.
	spoofer := n.AddClient("10.99.0.11/32")
	err = spoofer.Do(func() error {
		c, err := net.DialTimeout("tcp", "10.99.0.10:5433", 3*time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("the spoofed connection was answered")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}

	// db-2 reboots: db-1 keys it again and drops the old SAs at once.
	if err := vm2.PowerOff(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	vm2 = harness.Start(t, harness.Options{Name: "db-2-again", Image: img, Config: cfg2, Net: n, MAC: "52:54:00:00:00:11"})
	vm2.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	t0 = time.Now()
	vm1.MustWaitFor(`^bulwark: keying: ipsec: SAs installed peer=db-2 gen=\d+ .*peer_rebooted=true$`, 2*time.Minute)
	t.Logf("db-2 keyed again %s after its reboot", time.Since(t0).Round(100*time.Millisecond))
	// The SAs of db-2's previous boot are gone at once: one generation
	// left, though the grace period has not passed.
	out, code := op.run("robot", "status", "--json")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	var st struct {
		IPsec []struct {
			Name        string `json:"name"`
			State       string `json:"state"`
			Generations int    `json:"generations_installed"`
		} `json:"ipsec"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, p := range st.IPsec {
		if p.Name == "db-2" && (p.State != "up" || p.Generations != 1) {
			t.Errorf("db-2 after its reboot: state %q, %d generations installed; want up and 1", p.State, p.Generations)
		}
	}
}
