package firewall

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/config"
)

// dialEnv, when set in the environment, turns the test binary into a
// one-shot dialer (see TestMain): the tests start it as root inside the
// server namespace, it drops to the uid in dialUIDEnv, connects to the
// address in dialEnv and prints the outcome. This is how a connection
// comes from a process that really runs as another user, which is what
// the kernel's socket owner (meta skuid) reflects.
const (
	dialEnv    = "BULWARK_FWTEST_DIAL"
	dialUIDEnv = "BULWARK_FWTEST_UID"
)

func TestMain(m *testing.M) {
	if dst := os.Getenv(dialEnv); dst != "" {
		os.Exit(dialChild(dst, os.Getenv(dialUIDEnv)))
	}
	os.Exit(m.Run())
}

// dialChild is the child's whole life: drop every id to uid, check that
// it took, connect, print the outcome.
func dialChild(dst, uidText string) int {
	uid, err := strconv.Atoi(uidText)
	if err != nil {
		fmt.Printf("error: uid %q: %v", uidText, err)
		return 2
	}
	// Go applies these to every thread of the process.
	if err := syscall.Setgroups(nil); err != nil {
		fmt.Printf("error: setgroups: %v", err)
		return 2
	}
	if err := syscall.Setgid(uid); err != nil {
		fmt.Printf("error: setgid: %v", err)
		return 2
	}
	if err := syscall.Setuid(uid); err != nil {
		fmt.Printf("error: setuid: %v", err)
		return 2
	}
	if os.Getuid() != uid || os.Geteuid() != uid {
		fmt.Printf("error: still uid %d euid %d", os.Getuid(), os.Geteuid())
		return 2
	}
	fmt.Print(classify(net.DialTimeout("tcp", dst, 700*time.Millisecond)))
	return 0
}

// dialAs connects from the server namespace to dst:port in a child process
// running as uid, and returns the outcome (connected, refused, ...).
func dialAs(t *testing.T, l *lab, uid int, dst string, port int) string {
	t.Helper()
	var out []byte
	var err error
	// The child is forked from a thread inside the server namespace, so
	// it starts there.
	in(l.serverNS, func() {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = []string{dialEnv + "=" + net.JoinHostPort(dst, fmt.Sprint(port)), dialUIDEnv + "=" + fmt.Sprint(uid)}
		out, err = cmd.Output()
	})
	if err != nil {
		t.Fatalf("dialer as uid %d: %v: %s", uid, err, out)
	}
	return string(out)
}

// metadataLab is a lab whose client namespace also holds the metadata
// address (on-link from the server), with a listener on port 80 and on
// port 81 there, and one on 80 at a stranger's address.
func metadataLab(t *testing.T, addr string) *lab {
	t.Helper()
	l := newLab(t)
	bits, stranger := "32", "10.77.0.5"
	if strings.Contains(addr, ":") {
		bits, stranger = "128", "fd77::5"
	}
	l.ip("-n", l.client, "addr", "add", addr+"/"+bits, "dev", "c0", "nodad")
	l.ip("-n", l.server, "route", "add", addr+"/"+bits, "dev", "s0")
	for _, a := range []string{net.JoinHostPort(addr, "80"), net.JoinHostPort(addr, "81"), net.JoinHostPort(stranger, "80")} {
		var err error
		in(l.clientNS, func() {
			ln, e := listenTCP(a)
			err = e
			if e == nil {
				t.Cleanup(func() { ln.Close() })
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return l
}

const (
	metadataUID = 4242 // the user the config opens the metadata service to
	otherUID    = 4243 // any other unprivileged user (the workload, say)
)

// openMetadata opens the metadata service at addr, TCP port, to uid (the
// config's firewall.egress.metadata).
func openMetadata(f *config.Firewall, addr string, port, uid int) {
	f.Egress.Metadata = &config.Metadata{Address: addr, Port: port, UID: &uid}
}

// TestPolicyNoMetadataByDefault: a config that does not mention the
// metadata service opens no egress to it.
func TestPolicyNoMetadataByDefault(t *testing.T) {
	for _, c := range []*config.Config{
		{Version: 1, Hostname: "t"},
		{Version: 1, Hostname: "t", Firewall: &config.Firewall{}},
		testConfig(nil),
	} {
		p, err := FromConfig(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range p.Egress {
			if d.What == "metadata" {
				t.Errorf("firewall %+v: egress %+v", c.Firewall, d)
			}
		}
		for _, line := range p.Summary() {
			if strings.Contains(line, "metadata") {
				t.Errorf("summary: %s", line)
			}
		}
	}
}

// TestMetadataClosedByDefault: with no metadata section, neither root nor
// another user reaches 169.254.169.254:80.
func TestMetadataClosedByDefault(t *testing.T) {
	l := metadataLab(t, "169.254.169.254")
	apply(t, l, testConfig(nil))
	if got := dial(l.serverNS, "", "169.254.169.254", 80, 700*time.Millisecond); got != refused {
		t.Errorf("root -> 169.254.169.254:80: %s, want %s", got, refused)
	}
	if got := dialAs(t, l, otherUID, "169.254.169.254", 80); got != refused {
		t.Errorf("uid %d -> 169.254.169.254:80: %s, want %s", otherUID, got, refused)
	}
	if rs := l.ruleset(); strings.Contains(rs, "skuid") || strings.Contains(rs, "169.254.169.254 tcp dport 80 accept") ||
		!strings.Contains(rs, "ip daddr 169.254.169.254 meta l4proto tcp counter") {
		t.Errorf("nft list ruleset opens the metadata service, or lacks the rule that refuses it:\n%s", rs)
	}
}

// TestMetadataNotOpenedByAnOverlap: a peer range that happens to contain
// the metadata address (a link-local /16 given as peers, say) opens it to
// nobody: the metadata addresses are refused before any other egress
// rule, and when the config opens the service to one uid, to that uid
// only.
func TestMetadataNotOpenedByAnOverlap(t *testing.T) {
	l := metadataLab(t, "169.254.169.254")
	apply(t, l, testConfig(func(f *config.Firewall) { f.Peers = append(f.Peers, "169.254.0.0/16") }))
	if got := dialAs(t, l, otherUID, "169.254.169.254", 80); got != refused {
		t.Errorf("with 169.254.0.0/16 among the peers, uid %d -> 169.254.169.254:80: %s, want %s", otherUID, got, refused)
	}
	if got := dial(l.serverNS, "", "169.254.169.254", 80, 700*time.Millisecond); got != refused {
		t.Errorf("with 169.254.0.0/16 among the peers, root -> 169.254.169.254:80: %s, want %s", got, refused)
	}
	apply(t, l, testConfig(func(f *config.Firewall) {
		f.Peers = append(f.Peers, "169.254.0.0/16")
		openMetadata(f, "169.254.169.254", 80, metadataUID)
	}))
	for _, c := range []struct {
		uid, port int
		want      string
	}{{metadataUID, 80, connected}, {otherUID, 80, refused}, {metadataUID, 81, refused}} {
		if got := dialAs(t, l, c.uid, "169.254.169.254", c.port); got != c.want {
			t.Errorf("opened to uid %d, with the /16 among the peers: uid %d -> :%d: %s, want %s", metadataUID, c.uid, c.port, got, c.want)
		}
	}
}

// TestMetadataOneUID: opened for one uid, the metadata address and port
// are reachable by that user only: another user and root are refused, and
// the allowed user reaches neither another port there nor another host.
// IPv4 and IPv6.
func TestMetadataOneUID(t *testing.T) {
	for _, addr := range []string{"169.254.169.254", "fd00:ec2::254"} {
		t.Run(addr, func(t *testing.T) {
			l := metadataLab(t, addr)
			stranger := "10.77.0.5"
			if strings.Contains(addr, ":") {
				stranger = "fd77::5"
			}
			apply(t, l, testConfig(func(f *config.Firewall) { openMetadata(f, addr, 80, metadataUID) }))
			for _, c := range []struct {
				uid  int
				dst  string
				port int
				want string
			}{
				{metadataUID, addr, 80, connected},
				{otherUID, addr, 80, refused},
				{metadataUID, addr, 81, refused},
				{metadataUID, stranger, 80, refused},
			} {
				if got := dialAs(t, l, c.uid, c.dst, c.port); got != c.want {
					t.Errorf("uid %d -> [%s]:%d: %s, want %s", c.uid, c.dst, c.port, got, c.want)
				}
			}
			if got := dial(l.serverNS, "", addr, 80, 700*time.Millisecond); got != refused {
				t.Errorf("root -> [%s]:80: %s, want %s", addr, got, refused)
			}
			want := fmt.Sprintf("daddr %s tcp dport 80 meta skuid %d accept", addr, metadataUID)
			if rs := l.ruleset(); t.Failed() || !strings.Contains(rs, want) {
				t.Errorf("nft list ruleset (want a rule with %q):\n%s", want, rs)
			}
		})
	}
}
