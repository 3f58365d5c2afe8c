package qemutests

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// TLS only, the management API and its audit log, from outside: a client's
// TLS connection through the front door survives an allowlist change made
// with bulwarkctl, a client newly left out is refused, callers without a
// certificate, with a foreign, revoked or expired one, or with a role that
// may not act are refused, and the fetched audit log verifies (and a copy
// with one byte changed does not).
func TestManagement(t *testing.T) {
	img := testImage(t)
	ctlBin := buildCtl(t)
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.Init(filepath.Join(dir, "other"), "evil", "")
	node, _ := ca.IssueNode(pki.NodeRequest{Name: "db-1", IPs: []net.IP{net.ParseIP("10.99.0.10")}})
	write := func(name string, i *pki.Issued) (string, string) {
		c, k := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
		os.WriteFile(c, i.CertPEM, 0o644)
		os.WriteFile(k, i.KeyPEM, 0o600)
		return c, k
	}
	issue := func(ca *pki.CA, name, role string, validity time.Duration) *pki.Issued {
		i, err := ca.IssueClient(name, role, "", validity)
		if err != nil {
			t.Fatal(err)
		}
		write(name, i)
		return i
	}
	issue(ca, "robot", pki.RoleControlPlane, 0)
	issue(ca, "alice", pki.RoleOperator, 0)
	issue(other, "eve", pki.RoleControlPlane, 0)
	mallory := issue(ca, "mallory", pki.RoleControlPlane, 0)
	issue(ca, "old", pki.RoleControlPlane, time.Nanosecond)
	caFile := filepath.Join(dir, "ca", "ca.pem")

	tlsSection, _ := json.Marshal(map[string]any{"ca": string(ca.PEM), "certificate": string(node.CertPEM), "key": string(node.KeyPEM),
		"revoked_serials": []string{pki.SerialHex(mallory.Cert)}})
	cfg := fmt.Sprintf(`{"version": 1, "hostname": "db-1",
		"network": {"interfaces": [{"name": "eth0", "addresses": ["10.99.0.10/24"]}]},
		"firewall": {"client_ports": [5432], "clients": ["10.99.0.20", "10.99.0.21"], "management_sources": ["10.99.0.5"]},
		"tls": %s,
		"front_door": [{"port": 5432, "protocol": "tls", "backend": "127.0.0.1:5433"}],
		"volumes": [{"name": "data", "serial": "data0", "mount": "/var/lib/data"}],
		"workload": {"command": ["%s/netprobe", "-echo", "127.0.0.1:5433"], "uid": 999, "gid": 999}}`, tlsSection, testBin)

	n := harness.NewNet(t)
	ops := n.AddClient("10.99.0.5/24")
	appA := n.AddClient("10.99.0.20/24")
	appB := n.AddClient("10.99.0.21/24")
	vm := harness.Start(t, harness.Options{Name: "management", Image: img, Config: []byte(cfg), Net: n,
		Disks: []string{newDisk(t, dir, "d0", 64<<20)}})
	vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	vm.MustWaitFor(`^bulwark: workload: netprobe: echo server on 127.0.0.1:5433$`, time.Minute)

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	clientTLS := &tls.Config{RootCAs: pool, ServerName: "10.99.0.10"}
	dialApp := func(c *harness.Client) (*tls.Conn, error) {
		var tc *tls.Conn
		err := c.Do(func() error {
			d := &net.Dialer{Timeout: 5 * time.Second}
			var err error
			tc, err = tls.DialWithDialer(d, "tcp", "10.99.0.10:5432", clientTLS)
			return err
		})
		return tc, err
	}
	echo := func(c *tls.Conn, msg string) error {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if string(got) != msg {
			return fmt.Errorf("echoed %q", got)
		}
		return nil
	}
	ctl := operator{t: t, from: ops, bin: ctlBin, dir: dir, caFile: caFile}.run

	// This node has no TPM: it says so, and attestation says so clearly.
	if out, code := ctl("alice", "status"); code != 0 || !strings.Contains(out, "tpm: no TPM") {
		t.Errorf("status of a node without a TPM: exit %d\n%s", code, out)
	}
	if out, code := ctl("alice", "attest"); code != 1 || !strings.Contains(out, "no TPM on this node") {
		t.Errorf("attest on a node without a TPM: exit %d\n%s", code, out)
	}

	a, err := dialApp(appA)
	if err != nil {
		t.Fatalf("client A through the front door: %v", err)
	}
	defer a.Close()
	if err := echo(a, "before the change"); err != nil {
		t.Fatal(err)
	}
	b, err := dialApp(appB)
	if err != nil {
		t.Fatalf("client B before the change: %v", err)
	}
	if err := echo(b, "B is allowed"); err != nil {
		t.Fatal(err)
	}
	b.Close()

	if out, code := ctl("robot", "allowlist", "set", "10.99.0.20"); code != 0 {
		t.Fatalf("allowlist set: exit %d\n%s", code, out)
	}
	if err := echo(a, "after the change"); err != nil {
		t.Fatalf("client A's connection did not survive the change: %v", err)
	}
	if c, err := dialApp(appB); err == nil {
		c.Close()
		t.Fatal("client B connected after it was taken off the allowlist")
	}
	if out, code := ctl("alice", "status"); code != 0 || !strings.Contains(out, "clients on tcp 5432 from 10.99.0.20") || !strings.Contains(out, "front door 5432 (tls)") {
		t.Fatalf("operator status: exit %d\n%s", code, out)
	}

	// Refusals.
	for _, c := range []struct {
		who  string
		args []string
		want string
	}{
		{"alice", []string{"allowlist", "set", "0.0.0.0/0"}, `role "operator" may not`},
		{"eve", []string{"status"}, ""},
		{"mallory", []string{"status"}, ""},
		{"old", []string{"status"}, ""},
		{"robot", []string{"allowlist", "set", "10.99.0.300"}, "10.99.0.300"},
	} {
		out, code := ctl(c.who, c.args...)
		if code != 1 || !strings.Contains(out, c.want) {
			t.Errorf("%s %v: exit %d, want 1 and %q\n%s", c.who, c.args, code, c.want, out)
		}
	}
	// No certificate at all. The request is written by hand on a
	// connection dialled inside the client's namespace: an http.Client
	// would dial from a goroutine of its own, outside the namespace.
	err = ops.Do(func() error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", "10.99.0.10:9443", clientTLS)
		if err != nil {
			return nil // refused during the handshake
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /v1/status HTTP/1.1\r\nHost: 10.99.0.10\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			resp.Body.Close()
			return fmt.Errorf("answered %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		t.Errorf("a caller without a certificate: %v", err)
	}
	// The node records the refused handshake as it ends it; wait for the
	// record on the console before fetching the log.
	vm.MustWaitFor(`^bulwark: audit seq=\d+ kind=request who=10\.99\.0\.5:\d+ what="management TLS handshake" result="refused: no client certificate" .*prev=[0-9a-f]{64} hash=[0-9a-f]{64}$`, 10*time.Second)

	// The audit log: fetched, verified, and tampering detected.
	logFile := filepath.Join(dir, "audit.log")
	if out, code := ctl("alice", "audit", "fetch", "-o", logFile); code != 0 {
		t.Fatalf("audit fetch: %d\n%s", code, out)
	}
	text, _ := os.ReadFile(logFile)
	for _, want := range []string{
		`"kind":"config"`, "PUT /v1/allowlist [10.99.0.20]", `"result":"200 ok"`,
		"403 refused", "CN=eve", "refused: serial " + pki.SerialHex(mallory.Cert) + " is revoked", "expired", "refused: no client certificate",
	} {
		if !strings.Contains(string(text), want) {
			t.Errorf("the audit log lacks %q", want)
		}
	}
	if out, code := ctl("", "audit", "verify", logFile); code != 0 {
		t.Fatalf("audit verify: %d\n%s", code, out)
	}
	text[len(text)/2] ^= 1
	bad := filepath.Join(dir, "audit-changed.log")
	os.WriteFile(bad, text, 0o600)
	if out, code := ctl("", "audit", "verify", bad); code != 1 {
		t.Fatalf("audit verify of a changed copy: exit %d\n%s", code, out)
	}
	// The audit records reach the console too.
	vm.MustWaitFor(`^bulwark: audit seq=\d+ kind=request who="CN=robot`, time.Second)

	if out, code := ctl("robot", "shutdown", "--wipe"); code != 0 {
		t.Fatalf("shutdown: %d\n%s", code, out)
	}
	vm.MustWaitFor(`^bulwark: shutting down reason="management API, by CN=robot`, time.Minute)
	vm.MustWaitFor(`^bulwark: powered off cleanly$`, 2*time.Minute)
}
