package main

import (
	"bytes"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/mgmt"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

type node struct{ clients []string }

func (n *node) Status() any {
	return map[string]any{"hostname": "n1", "firewall": []string{"default deny"}}
}
func (n *node) Allowlist() []string                     { return n.clients }
func (n *node) SetAllowlist(e []string) (string, error) { n.clients = e; return "", nil }
func (n *node) Backup() error                           { return mgmt.ErrNotAvailable }
func (n *node) Rekey() error                            { return mgmt.ErrNotAvailable }
func (n *node) Attest([]byte) (any, error)              { return nil, mgmt.ErrNotAvailable }
func (n *node) Shutdown(string)                         {}

func ctl(t *testing.T, want int, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(args, &out, &errb); code != want {
		t.Fatalf("bulwarkctl %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out.String(), errb.String())
	}
	return out.String() + errb.String()
}

// The whole operator path: make a CA and certificates with the CLI, talk
// to a management API with them, fetch and verify the audit log.
func TestCLIAgainstAManagementAPI(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	out := ctl(t, 0, "ca", "init", "--dir", ca, "--project", "acme")
	if !strings.Contains(out, "acme project CA") {
		t.Fatal(out)
	}
	ctl(t, 1, "ca", "init", "--dir", ca, "--project", "acme") // exists
	ctl(t, 2, "ca", "init", "--dir", ca)                      // usage
	ctl(t, 0, "ca", "issue", "node", "--dir", ca, "--name", "n1", "--ip", "127.0.0.1", "--out", filepath.Join(dir, "node"), "--tls-json", filepath.Join(dir, "tls.json"))
	ctl(t, 0, "ca", "issue", "client", "--dir", ca, "--name", "robot", "--role", "control-plane", "--out", filepath.Join(dir, "robot"))
	ctl(t, 1, "ca", "issue", "client", "--dir", ca, "--name", "x", "--role", "root", "--out", filepath.Join(dir, "x"))
	if out := ctl(t, 0, "ca", "verify", "--dir", ca, filepath.Join(dir, "node.pem")); !strings.Contains(out, "valid for server use") {
		t.Fatal(out)
	}
	ctl(t, 1, "ca", "verify", "--dir", ca, "--use", "server", filepath.Join(dir, "robot.pem"))
	if out := ctl(t, 0, "ca", "show", "--dir", ca); !strings.HasPrefix(out, "-----BEGIN CERTIFICATE-----") {
		t.Fatal(out)
	}
	if st, _ := os.Stat(filepath.Join(dir, "robot.key")); st.Mode().Perm() != 0o600 {
		t.Fatal("client key is not owner-only")
	}

	loaded, _ := pki.Load(ca)
	nodePair, err := tls.LoadX509KeyPair(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	log := audit.New(nil)
	s, err := mgmt.Listen(mgmt.Options{Addr: "127.0.0.1:0", CA: loaded.Cert, Cert: nodePair, Audit: log, Node: &node{clients: []string{"0.0.0.0/0"}}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	defer s.Close()
	flags := []string{"--node", s.Addr().String(), "--cert", filepath.Join(dir, "robot.pem"), "--key", filepath.Join(dir, "robot.key"), "--ca", filepath.Join(ca, "ca.pem")}
	with := func(args ...string) []string { return append(args, flags...) }

	if out := ctl(t, 0, with("status")...); !strings.Contains(out, "node n1") || !strings.Contains(out, "firewall: default deny") {
		t.Fatal(out)
	}
	// Flags may come after the arguments, too.
	if out := ctl(t, 0, with("allowlist", "set", "10.0.0.0/8", "fd00::/8")...); !strings.Contains(out, "10.0.0.0/8") {
		t.Fatal(out)
	}
	if out := ctl(t, 0, with("allowlist", "get", "--json")...); !strings.Contains(out, `"fd00::/8"`) {
		t.Fatal(out)
	}
	if out := ctl(t, 1, with("backup", "start")...); !strings.Contains(out, "not available") {
		t.Fatal(out)
	}
	if out := ctl(t, 1, with("attest")...); !strings.Contains(out, "(501): not available") {
		t.Fatal(out)
	}
	ctl(t, 2, with("shutdown")...) // no --wipe
	logFile := filepath.Join(dir, "audit.log")
	ctl(t, 0, with("audit", "fetch", "-o", logFile)...)
	if out := ctl(t, 0, "audit", "verify", logFile); !strings.Contains(out, "chain intact") {
		t.Fatal(out)
	}
	b, _ := os.ReadFile(logFile)
	i := bytes.Index(b, []byte("allowlist"))
	b[i] = 'A'
	bad := filepath.Join(dir, "edited.log")
	os.WriteFile(bad, b, 0o600)
	if out := ctl(t, 1, "audit", "verify", bad); !strings.Contains(out, "edited") {
		t.Fatal(out)
	}
	// Without a usable certificate the node is not reached.
	ctl(t, 2, "status")
	ctl(t, 1, "status", "--node", s.Addr().String(), "--cert", filepath.Join(dir, "node.pem"), "--key", filepath.Join(dir, "node.key"), "--ca", filepath.Join(ca, "ca.pem"))
}

// TestPrintStatusServices: the text status lists each service process
// with what the kernel says of it, and its last exit once it restarted.
func TestPrintStatusServices(t *testing.T) {
	in := `{"hostname": "db-1", "services": [
		{"name": "frontdoor", "state": "running", "pid": 310, "uid": "61001", "cap_eff": "0000000000000000", "no_new_privs": "1", "seccomp": "2", "landlock": "ABI v4", "restarts": 0},
		{"name": "keying", "state": "running", "pid": 412, "uid": "61003", "cap_eff": "0000000000001000", "no_new_privs": "1", "seccomp": "2", "landlock": "ABI v4", "restarts": 2, "last_exit": "killed by signal killed"}],
		"ipsec": "not configured on this node"}`
	var out bytes.Buffer
	if err := printStatus(&out, []byte(in)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"service frontdoor: running, pid 310, uid 61001, no capabilities, no_new_privs 1, seccomp 2, landlock ABI v4, 0 restarts\n",
		"service keying: running, pid 412, uid 61003, capabilities 0000000000001000, no_new_privs 1, seccomp 2, landlock ABI v4, 2 restarts, last killed by signal killed\n",
		"ipsec: not configured on this node\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
}
