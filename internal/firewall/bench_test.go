package firewall

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/config"
)

// cidrs returns n /24 networks with gaps between them (so that merging
// cannot join them: the set really holds n ranges), offset by seed so that
// two lists differ.
func cidrs(n, seed int) []string {
	out := make([]string, n)
	for i := range out {
		j := 2 * (i + seed)
		out[i] = fmt.Sprintf("%d.%d.%d.0/24", 11+j>>16, j>>8&255, j&255)
	}
	return out
}

// BenchmarkAllowlist10k applies a policy whose client allowlist has 10,000
// CIDRs, then replaces the allowlist with 10,000 others, and in the same
// run loads the same 10,000 rules as an iptables chain with
// iptables-restore (the baseline). Each in a fresh network namespace.
func BenchmarkAllowlist10k(b *testing.B) {
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		b.Fatal("iptables-restore is not installed (make bench-firewall installs the iptables package)")
	}
	a, c := cidrs(10000, 0), cidrs(10000, 20000)
	var apply, replace, ipt time.Duration
	for i := 0; i < b.N; i++ {
		l := newLab(b)
		fw := l.firewall()
		p, err := FromConfig(&config.Config{Version: 1, Hostname: "b", Firewall: &config.Firewall{Clients: &a}})
		if err != nil {
			b.Fatal(err)
		}
		if p.Clients.Len() != 10000 {
			b.Fatalf("the allowlist merged into %d ranges; the benchmark needs 10,000", p.Clients.Len())
		}
		t0 := time.Now()
		if err := fw.Apply(p); err != nil {
			b.Fatal(err)
		}
		apply += time.Since(t0)
		t0 = time.Now()
		if _, err := fw.Replace(SetClients, c); err != nil {
			b.Fatal(err)
		}
		replace += time.Since(t0)

		var rules bytes.Buffer
		rules.WriteString("*filter\n:INPUT DROP [0:0]\n:clients - [0:0]\n-A INPUT -p tcp --dport 5432 -j clients\n")
		for _, n := range a {
			fmt.Fprintf(&rules, "-A clients -s %s -j ACCEPT\n", n)
		}
		rules.WriteString("COMMIT\n")
		cmd := exec.Command("ip", "netns", "exec", l.client, "iptables-restore")
		cmd.Stdin = &rules
		t0 = time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("iptables-restore: %v\n%s", err, out)
		}
		ipt += time.Since(t0)
		l.close()
	}
	n := float64(b.N)
	b.ReportMetric(apply.Seconds()*1000/n, "ms-apply")
	b.ReportMetric(replace.Seconds()*1000/n, "ms-replace")
	b.ReportMetric(ipt.Seconds()*1000/n, "ms-iptables-restore")
	b.ReportMetric(ipt.Seconds()/apply.Seconds(), "x-faster-apply")
	b.ReportMetric(ipt.Seconds()/replace.Seconds(), "x-faster-replace")
}

// BenchmarkConnectLatency measures TCP connection set-up through the
// firewall with a 1-entry and a 10,000-entry client allowlist (the client
// is in both), alternating in the same run.
func BenchmarkConnectLatency(b *testing.B) {
	l := newLab(b)
	l.listen(5432)
	fw := l.firewall()
	one := []string{"10.77.0.2"}
	many := append(cidrs(9999, 0), "10.77.0.2")
	p, err := FromConfig(&config.Config{Version: 1, Hostname: "b", Firewall: &config.Firewall{Clients: &one}})
	if err != nil {
		b.Fatal(err)
	}
	if err := fw.Apply(p); err != nil {
		b.Fatal(err)
	}
	const per = 200
	var small, large time.Duration
	measure := func() time.Duration {
		var d time.Duration
		in(l.clientNS, func() {
			dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("10.77.0.2")}}
			for i := 0; i < per; i++ {
				t0 := time.Now()
				c, err := dl.Dial("tcp", "10.77.0.1:5432")
				d += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
		return d
	}
	for i := 0; i < b.N; i++ {
		if _, err := fw.Replace(SetClients, one); err != nil {
			b.Fatal(err)
		}
		small += measure()
		if _, err := fw.Replace(SetClients, many); err != nil {
			b.Fatal(err)
		}
		large += measure()
	}
	n := float64(b.N * per)
	b.ReportMetric(float64(small.Microseconds())/n, "us-1-entry")
	b.ReportMetric(float64(large.Microseconds())/n, "us-10k-entries")
	b.ReportMetric(large.Seconds()/small.Seconds(), "ratio")
}
