// Command demo is make demo: it makes a project CA, boots the built image
// under QEMU with an example config, a node certificate and two blank data
// disks, on a test bridge in a private network namespace, and shows each
// promise from outside: the readiness report, both disks LUKS2 volumes with
// keys of their own, TLS only on the client port, the firewall refusing a
// stranger until the control plane allows it through the management API,
// the audit log verified, a final backup at shutdown, and the disks
// crypto-erased after a shutdown through the API. It exits 0 only if every step worked.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// runner lets the harness run outside go test.
type runner struct {
	failed   bool
	cleanups []func()
}

func (r *runner) Helper()                      {}
func (r *runner) Logf(f string, a ...any)      { fmt.Printf(f+"\n", a...) }
func (r *runner) Cleanup(f func())             { r.cleanups = append(r.cleanups, f) }
func (r *runner) Failed() bool                 { return r.failed }
func (r *runner) Fatal(a ...any)               { r.fail(fmt.Sprint(a...)) }
func (r *runner) Fatalf(f string, a ...any)    { r.fail(fmt.Sprintf(f, a...)) }
func (r *runner) fail(msg string)              { r.failed = true; panic(failure(msg)) }
func (r *runner) step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

type failure string

func (r *runner) close() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func main() {
	out := flag.String("out", "out", "directory holding the built image")
	cfgPath := flag.String("config", "docs/examples/node-volumes.json", "node config (its volumes use the demo's two disks, serials data0 and data1)")
	flag.Parse()
	r := &runner{}
	code := 0
	func() {
		defer func() {
			if p := recover(); p != nil {
				f, ok := p.(failure)
				if !ok {
					panic(p)
				}
				fmt.Fprintf(os.Stderr, "\ndemo FAILED: %s\n", f)
				code = 1
			}
		}()
		demo(r, *out, *cfgPath)
	}()
	r.close()
	os.Exit(code)
}

func demo(r *runner, out, cfgPath string) {
	img, err := harness.ImageFromDir(out)
	if err != nil {
		r.Fatal(err)
	}
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		r.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "bulwark-demo-")
	if err != nil {
		r.Fatal(err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })

	r.step("test network: a bridge in a private namespace; a client at 10.99.0.20 and fd99::20 (in the allowlist), a stranger at 10.99.0.50 (not), an operator's machine at 10.99.0.5")
	n := harness.NewNet(r)
	client := n.AddClient("10.99.0.20/24", "fd99::20/64")
	stranger := n.AddClient("10.99.0.50/24")
	ops := n.AddClient("10.99.0.5/24")

	r.step("the project CA (bulwarkctl ca init), a node certificate for 10.99.0.10, an operator's and the control plane's client certificates")
	p := newPKI(r, dir)
	fmt.Print(p.caText)

	r.step("the service's backup key pair (bulwarkctl backup keygen; the node gets the public key only) and a MinIO bucket in region %s at %s on the bridge", s3Region, s3Addr)
	fmt.Print(p.ctl(r, nil, "", 0, "backup", "keygen", "--out", filepath.Join(dir, "svc")))
	startStore(r, n)
	cfg = p.addToConfig(r, cfg)

	r.step("two blank 256 MiB data disks, serials data0 and data1")
	disks := []string{filepath.Join(dir, "data0.img"), filepath.Join(dir, "data1.img")}
	for _, d := range disks {
		if err := os.WriteFile(d, nil, 0o600); err != nil {
			r.Fatal(err)
		}
		if err := os.Truncate(d, 256<<20); err != nil {
			r.Fatal(err)
		}
	}

	r.step("booting %s with %s, plus the node's tls section, a PostgreSQL front door, IPsec with a second node and backups (direct kernel boot, software emulation, a TPM from swtpm)", out, cfgPath)
	t0 := time.Now()
	cfgFile := filepath.Join(dir, "node-1.json") // what the auditor holds
	if err := os.WriteFile(cfgFile, cfg, 0o644); err != nil {
		r.Fatal(err)
	}
	vm := harness.Start(r, harness.Options{Name: "demo", Image: img, Config: cfg, Net: n, Disks: disks, Echo: os.Stdout, TPM: true})
	vm2 := harness.Start(r, harness.Options{Name: "db-node-2", Image: img, Config: p.secondNode(r), Net: n})
	vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	fmt.Printf("node ready %.1fs after QEMU started\n", time.Since(t0).Seconds())
	vm2.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)

	r.step("what the host sees on the data disks while the node runs (cryptsetup luksDump)")
	for _, d := range disks {
		o, err := exec.Command("cryptsetup", "luksDump", d).CombinedOutput()
		if err != nil {
			r.Fatalf("cryptsetup luksDump %s: %v\n%s", d, err, o)
		}
		fmt.Printf("%s: %s\n", filepath.Base(d), dumpSummary(string(o)))
	}

	r.step("reaching the node from the test client")
	for _, addr := range []string{"10.99.0.10", "fd99::10"} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		o, err := client.Command(ctx, "ping", "-c", "2", "-W", "5", addr).CombinedOutput()
		cancel()
		if err != nil {
			r.Fatalf("ping %s: %v\n%s", addr, err, o)
		}
		fmt.Printf("ping %s: %s\n", addr, summary(string(o)))
	}

	r.step("IPsec with the second node (db-node-2, 10.99.0.11, booted alongside)")
	vm.MustWaitFor(`^bulwark: keying: ipsec: SAs installed peer=db-node-2 gen=1 `, 2*time.Minute)
	for _, l := range vm.Lines() {
		if strings.Contains(l.Text, "ipsec: SAs installed") {
			fmt.Println("  " + l.Text)
		}
	}

	r.step("only TLS on the client port")
	fmt.Println(p.tlsHandshake(r, client, "10.99.0.10:5432"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	o, err := client.Command(ctx, "psql", "host=10.99.0.10 port=5432 user=postgres dbname=postgres sslmode=disable", "-c", "select 1").CombinedOutput()
	cancel()
	if err == nil || !strings.Contains(string(o), "TLS is required") {
		r.Fatalf("psql sslmode=disable: %v\n%s", err, o)
	}
	fmt.Printf("psql sslmode=disable: %s\n", strings.TrimSpace(string(o)))

	r.step("the firewall refuses the stranger")
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	o, err = stranger.Command(ctx, "ping", "-c", "1", "-W", "5", "10.99.0.10").CombinedOutput()
	cancel()
	if err == nil {
		r.Fatalf("the stranger's ping was answered:\n%s", o)
	}
	fmt.Printf("ping 10.99.0.10 from 10.99.0.50: %s\n", rejected(string(o)))
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	conn, err := stranger.Dial(ctx, "tcp", "10.99.0.10:9443")
	cancel()
	if err == nil {
		conn.Close()
		r.Fatal("the stranger reached the management port")
	}
	fmt.Printf("tcp 10.99.0.10:9443 (management) from 10.99.0.50: %v\n", err)

	r.step("the management API, from the operator's machine (bulwarkctl, mutual TLS)")
	status := p.ctl(r, ops, "alice", 0, "status")
	for _, l := range strings.Split(status, "\n") {
		if strings.HasPrefix(l, "node ") || strings.HasPrefix(l, "firewall: clients") || strings.HasPrefix(l, "front door") || strings.HasPrefix(l, "ipsec peer") || strings.HasPrefix(l, "audit:") {
			fmt.Println("  " + l)
		}
	}
	fmt.Printf("operator tries to change the allowlist: %s", p.ctl(r, ops, "alice", 1, "allowlist", "set", "0.0.0.0/0"))
	fmt.Printf("control plane adds the stranger:\n%s", p.ctl(r, ops, "robot", 0, "allowlist", "set", "10.99.0.16/28", "fd99::20", "10.99.0.50"))
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	o, err = stranger.Command(ctx, "ping", "-c", "1", "-W", "5", "10.99.0.10").CombinedOutput()
	cancel()
	if err != nil {
		r.Fatalf("the stranger is still refused after the change:\n%s", o)
	}
	fmt.Printf("ping 10.99.0.10 from 10.99.0.50 now: %s\n", summary(string(o)))
	gen := 0
	for _, l := range vm.Lines() {
		var g int
		if i := strings.Index(l.Text, "ipsec: SAs installed peer=db-node-2 gen="); i >= 0 {
			fmt.Sscanf(l.Text[i+len("ipsec: SAs installed peer=db-node-2 gen="):], "%d", &g)
			gen = max(gen, g)
		}
	}
	fmt.Printf("control plane forces an IPsec rekey: %s", p.ctl(r, ops, "robot", 0, "ipsec", "rekey"))
	l := vm.MustWaitFor(fmt.Sprintf(`^bulwark: keying: ipsec: SAs installed peer=db-node-2 gen=%d `, gen+1), time.Minute)
	fmt.Println("  " + l.Text)
	logFile := filepath.Join(dir, "audit.log")
	fmt.Print(p.ctl(r, ops, "alice", 0, "audit", "fetch", "-o", logFile))
	fmt.Print(p.ctl(r, nil, "", 0, "audit", "verify", logFile))

	r.step("attestation from outside (bulwarkctl attest): a TPM quote over PCR 15, checked against the config the auditor holds")
	fmt.Print(p.ctl(r, ops, "alice", 0, "attest", "--config", cfgFile))
	other := strings.Replace(string(cfg), `"10.99.0.16/28"`, `"10.99.0.0/24"`, 1)
	otherFile := filepath.Join(dir, "node-1-other.json")
	os.WriteFile(otherFile, []byte(other), 0o644)
	bad := p.ctl(r, ops, "alice", 1, "attest", "--config", otherFile)
	fmt.Printf("the same check against a config with one allowlist entry changed:\n%s", bad[strings.Index(bad, "FAIL"):])

	r.step("a backup of the data volume to the bucket, restored on the host with the private key")
	p.showBackup(r, vm, ops)

	r.step("shutting the node down through the management API (bulwarkctl shutdown --wipe)")
	fmt.Print(p.ctl(r, ops, "robot", 0, "shutdown", "--wipe"))
	vm.MustWaitFor(`^bulwark: powered off cleanly$`, 2*time.Minute)
	if err := vm.WaitExit(time.Minute); err != nil {
		r.Fatal(err)
	}

	r.step("the bucket after shutdown: the final backup round ran before the volumes were erased")
	p.showFinalBackup(r, ops)

	r.step("the data disks after shutdown (cryptsetup isLuks)")
	for _, d := range disks {
		if err := exec.Command("cryptsetup", "isLuks", d).Run(); err == nil {
			r.Fatalf("%s still has a LUKS header after shutdown", d)
		}
		fmt.Printf("%s: no LUKS header: crypto-erased\n", filepath.Base(d))
	}
	fmt.Println("\ndemo OK: the node booted, encrypted both data volumes with keys of its own, keyed IPsec with its peer, spoke only TLS on its client port, answered the allowed client and refused the stranger until the control plane allowed it, proved its measured state to an auditor outside, audited every management call, backed its volume up for a key it never held (restored on the host), and powered off with a final backup and its volumes crypto-erased")
}

// dumpSummary picks the lines of luksDump an auditor looks at.
func dumpSummary(dump string) string {
	var parts []string
	for _, l := range strings.Split(dump, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 2 && f[0] == "UUID:":
			parts = append(parts, "uuid "+f[1])
		case len(f) == 2 && f[0] == "cipher:":
			parts = append(parts, f[1])
		case len(f) == 3 && f[0] == "Key:":
			parts = append(parts, f[1]+"-bit key")
		case len(f) == 3 && f[0] == "sector:":
			parts = append(parts, f[1]+"-byte sectors")
		case len(f) == 2 && f[0] == "Hash:" && !slices.Contains(parts, "sha256"):
			parts = append(parts, f[1])
		}
	}
	return strings.Join(parts, ", ")
}

// rejected picks ping's line about the ICMP error, if any.
func rejected(ping string) string {
	for _, l := range strings.Split(ping, "\n") {
		if strings.Contains(l, "From ") || strings.Contains(l, "filtered") || strings.Contains(l, "prohibited") {
			return strings.TrimSpace(l)
		}
	}
	return summary(ping)
}

func summary(ping string) string {
	for _, l := range strings.Split(ping, "\n") {
		if strings.Contains(l, "packets transmitted") {
			return l
		}
	}
	return strings.TrimSpace(ping)
}
