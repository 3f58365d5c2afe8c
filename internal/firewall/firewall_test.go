package firewall

import (
	"bytes"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/config"
)

// testConfig is the policy of the namespace tests: a narrow client
// allowlist, two peers, one management source, one backup endpoint.
func testConfig(edit func(*config.Firewall)) *config.Config {
	clients := []string{"10.77.0.2", "198.51.100.0/24", "fd77::2"}
	f := &config.Firewall{
		ClientPorts:       []int{5432},
		Clients:           &clients,
		Peers:             []string{"10.77.0.3", "fd77::3"},
		PeerPorts:         []int{5433},
		ManagementSources: []string{"10.77.0.4"},
		Egress:            config.Egress{Backup: []config.Endpoint{{Address: "10.77.0.6", Port: 443}}},
	}
	if edit != nil {
		edit(f)
	}
	return &config.Config{Version: 1, Hostname: "t", Firewall: f}
}

func apply(t *testing.T, l *lab, c *config.Config) *Firewall {
	t.Helper()
	p, err := FromConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	fw := l.firewall()
	if err := fw.Apply(p); err != nil {
		t.Fatal(err)
	}
	return fw
}

type probe struct {
	src, dst string
	port     int
	want     string
}

func check(t *testing.T, l *lab, probes []probe) {
	t.Helper()
	for _, p := range probes {
		if got := dial(l.clientNS, p.src, p.dst, p.port, 700*time.Millisecond); got != p.want {
			t.Errorf("%s -> [%s]:%d: %s, want %s", p.src, p.dst, p.port, got, p.want)
		}
	}
}

// Every class of source against every port, IPv4 and IPv6, in the default
// reject mode.
func TestPolicyInNamespaces(t *testing.T) {
	l := newLab(t)
	l.listen(5432, 5433, 7443, 9443, 8080)
	apply(t, l, testConfig(nil))
	check(t, l, []probe{
		// allowed client
		{"10.77.0.2", "10.77.0.1", 5432, connected},
		{"198.51.100.2", "198.51.100.1", 5432, connected},
		{"fd77::2", "fd77::1", 5432, connected},
		{"10.77.0.2", "10.77.0.1", 5433, refused}, // peer port
		{"10.77.0.2", "10.77.0.1", 9443, refused}, // management
		{"10.77.0.2", "10.77.0.1", 8080, refused}, // nothing
		// peer
		{"10.77.0.3", "10.77.0.1", 5433, connected},
		{"10.77.0.3", "10.77.0.1", 7443, connected},
		{"fd77::3", "fd77::1", 7443, connected},
		{"10.77.0.3", "10.77.0.1", 5432, refused}, // a peer is not a client
		{"10.77.0.3", "10.77.0.1", 9443, refused},
		// management source
		{"10.77.0.4", "10.77.0.1", 9443, connected},
		{"10.77.0.4", "10.77.0.1", 5432, refused},
		// strangers
		{"10.77.0.5", "10.77.0.1", 5432, refused},
		{"10.77.0.5", "10.77.0.1", 5433, refused},
		{"10.77.0.5", "10.77.0.1", 7443, refused},
		{"10.77.0.5", "10.77.0.1", 9443, refused},
		{"fd77::5", "fd77::1", 5432, refused},
		{"2001:db8:77::2", "2001:db8:77::1", 5432, refused},
	})
}

// The same in drop mode: refused connections time out instead.
func TestDropMode(t *testing.T) {
	l := newLab(t)
	l.listen(5432, 8080)
	apply(t, l, testConfig(func(f *config.Firewall) { f.Blocked = "drop" }))
	check(t, l, []probe{
		{"10.77.0.2", "10.77.0.1", 5432, connected},
		{"10.77.0.5", "10.77.0.1", 5432, timedOut},
		{"fd77::5", "fd77::1", 5432, timedOut},
		{"10.77.0.2", "10.77.0.1", 8080, timedOut},
	})
}

// VPC mode: clients only from the VPC networks and the allowlist together;
// a public address in the allowlist is still refused.
func TestVPCMode(t *testing.T) {
	l := newLab(t)
	l.listen(5432)
	apply(t, l, testConfig(func(f *config.Firewall) {
		all := []string{"0.0.0.0/0", "::/0"}
		f.Clients = &all
		f.VPCNetworks = []string{"10.77.0.0/24", "fd77::/64"}
	}))
	check(t, l, []probe{
		{"10.77.0.5", "10.77.0.1", 5432, connected},
		{"fd77::5", "fd77::1", 5432, connected},
		{"198.51.100.2", "198.51.100.1", 5432, refused},
		{"2001:db8:77::2", "2001:db8:77::1", 5432, refused},
	})
}

// The default policy (no firewall section): anyone may reach the client
// port, nothing else is open.
func TestDefaultPolicy(t *testing.T) {
	l := newLab(t)
	l.listen(5432, 9443)
	apply(t, l, &config.Config{Version: 1, Hostname: "t"})
	check(t, l, []probe{
		{"10.77.0.5", "10.77.0.1", 5432, connected},
		{"2001:db8:77::2", "2001:db8:77::1", 5432, connected},
		{"10.77.0.5", "10.77.0.1", 9443, refused},
	})
	if rs := l.ruleset(); !strings.Contains(rs, "table inet bulwark") || !strings.Contains(rs, "0.0.0.0/0") || !strings.Contains(rs, "::/0") {
		t.Fatalf("nft list ruleset:\n%s", rs)
	}
}

// New outbound connections go only to peers and configured endpoints.
func TestEgress(t *testing.T) {
	l := newLab(t)
	apply(t, l, testConfig(nil))
	// Listeners on the client side: a peer, the backup endpoint, and a
	// stranger.
	for _, a := range []string{"10.77.0.3:5433", "10.77.0.6:443", "10.77.0.6:444", "10.77.0.5:443"} {
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
	for _, c := range []struct {
		dst  string
		port int
		want string
	}{
		{"10.77.0.3", 5433, connected}, // peer
		{"10.77.0.6", 443, connected},  // backup endpoint
		{"10.77.0.6", 444, refused},    // right host, wrong port
		{"10.77.0.5", 443, refused},    // anywhere else
	} {
		got := dial(l.serverNS, "", c.dst, c.port, 700*time.Millisecond)
		if got != c.want {
			t.Errorf("server -> %s:%d: %s, want %s", c.dst, c.port, got, c.want)
		}
	}
}

// An established connection survives 1000 allowlist replacements, and a
// client present in every version of the list is never refused while they
// happen.
func TestLiveReplacement(t *testing.T) {
	l := newLab(t)
	l.listen(5432)
	fw := apply(t, l, testConfig(nil))

	var est interface {
		Write([]byte) (int, error)
		Read([]byte) (int, error)
		Close() error
	}
	in(l.clientNS, func() {
		c, err := dialFrom("10.77.0.2", "10.77.0.1:5432")
		if err != nil {
			t.Fatal(err)
		}
		est = c
	})
	defer est.Close()

	var attempts, failures atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if r := dial(l.clientNS, "10.77.0.2", "10.77.0.1", 5432, 2*time.Second); r != connected {
				failures.Add(1)
			}
			attempts.Add(1)
		}
	}()
	a := []string{"10.77.0.2", "198.51.100.0/24", "fd77::2"}
	b := []string{"10.77.0.0/28", "192.0.2.0/24", "fd77::/64"}
	for i := 0; i < 1000; i++ {
		list := a
		if i%2 == 1 {
			list = b
		}
		if _, err := fw.Replace(SetClients, list); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-done
	t.Logf("%d connection attempts during 1000 replacements, %d failed", attempts.Load(), failures.Load())
	if attempts.Load() < 10 || failures.Load() != 0 {
		t.Fatalf("%d of %d attempts failed", failures.Load(), attempts.Load())
	}
	msg := []byte("still here")
	if _, err := est.Write(msg); err != nil {
		t.Fatalf("established connection: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := est.Read(buf); err != nil || string(buf) != string(msg) {
		t.Fatalf("established connection read %q, %v", buf, err)
	}
	// The replacement took effect: 10.77.0.2 is in b; a client only in a
	// (198.51.100.2) is refused now.
	check(t, l, []probe{{"198.51.100.2", "198.51.100.1", 5432, refused}, {"10.77.0.2", "10.77.0.1", 5432, connected}})
}

// A bad update is refused with the entry named, and the rules stay byte
// for byte as they were.
func TestInvalidUpdateChangesNothing(t *testing.T) {
	l := newLab(t)
	fw := apply(t, l, testConfig(nil))
	before := l.ruleset()
	for _, c := range []struct {
		set     string
		entries []string
		want    string
	}{
		{SetClients, []string{"10.0.0.0/8", "192.168.1.15/24"}, `clients[1]: "192.168.1.15/24" has host bits set; did you mean 192.168.1.0/24?`},
		{SetClients, []string{"10.0.0.1", "garbage"}, `clients[1]: "garbage"`},
		{SetPeers, []string{"10.0.0.0/33"}, `peers[0]`},
		{SetVPC, []string{"8.8.8.0/24"}, "not private"},
		{"shell", []string{"10.0.0.1"}, "not a replaceable list"},
	} {
		_, err := fw.Replace(c.set, c.entries)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Replace(%s, %q): got %v, want %q", c.set, c.entries, err, c.want)
		}
	}
	big := make([]string, 70000)
	for i := range big {
		big[i] = fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255)
	}
	if _, err := fw.Replace(SetClients, big); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversized list: %v", err)
	}
	if after := l.ruleset(); after != before {
		t.Fatalf("the ruleset changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// An empty allowlist is allowed, with a warning.
	w, err := fw.Replace(SetClients, nil)
	if err != nil || !strings.Contains(w, "empty") {
		t.Fatalf("empty allowlist: %q %v", w, err)
	}
}

// TestRuleset: the read-back rendering holds the policy's addresses and
// rules, is the same for the same policy, and changes with one allowlist
// entry (what the TPM measurement relies on).
func TestRuleset(t *testing.T) {
	l := newLab(t)
	fw := apply(t, l, testConfig(nil))
	a, err := fw.Ruleset()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"table inet bulwark", "chain input type filter", "policy 0", "rule ", "counter"} {
		if !strings.Contains(string(a), want) {
			t.Errorf("ruleset lacks %q:\n%s", want, a)
		}
	}
	if strings.Contains(string(a), "0x") && strings.Contains(string(a), "Handle") {
		t.Errorf("ruleset holds handles:\n%s", a)
	}
	// The same policy again (a new transaction, new handles): the same text.
	apply(t, l, testConfig(nil))
	b, _ := fw.Ruleset()
	if !bytes.Equal(a, b) {
		t.Fatalf("the same policy renders differently:\n%s\n---\n%s", a, b)
	}
	if _, err := fw.Replace(SetClients, []string{"10.77.0.2", "198.51.100.7"}); err != nil {
		t.Fatal(err)
	}
	c, _ := fw.Ruleset()
	if bytes.Equal(a, c) {
		t.Fatal("changing the allowlist left the ruleset text unchanged")
	}
}
