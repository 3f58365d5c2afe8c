package main

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/mgmt"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

// A refused certificate is named, with the reason and what to check:
// the node's (another CA, another name) or yours (not a client
// certificate, expired, revoked on the node).
func TestRefusedCertificateSaysWhich(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = pki.Init(filepath.Join(dir, "other"), "evil", "")
	if err != nil {
		t.Fatal(err)
	}
	n, _ := ca.IssueNode(pki.NodeRequest{Name: "n1", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o600)
		return p
	}
	nodePEM, nodeKey := write("node.pem", n.CertPEM), write("node.key", n.KeyPEM)
	robot, _ := ca.IssueClient("robot", pki.RoleControlPlane, "", 0)
	robotPEM, robotKey := write("robot.pem", robot.CertPEM), write("robot.key", robot.KeyPEM)
	revoked, _ := ca.IssueClient("gone", pki.RoleOperator, "", 0)
	revokedPEM, revokedKey := write("gone.pem", revoked.CertPEM), write("gone.key", revoked.KeyPEM)
	old, err := ca.IssueClient("old", pki.RoleOperator, "", time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	oldPEM, oldKey := write("old.pem", old.CertPEM), write("old.key", old.KeyPEM)
	time.Sleep(10 * time.Millisecond)
	caPEM := filepath.Join(dir, "ca", "ca.pem")
	otherPEM := filepath.Join(dir, "other", "ca.pem")

	pair, _ := tls.X509KeyPair(n.CertPEM, n.KeyPEM)
	s, err := mgmt.Listen(mgmt.Options{Addr: "127.0.0.1:0", CA: ca.Cert, Cert: pair, Audit: audit.New(nil), Node: &node{},
		Revoked: []string{pki.SerialHex(revoked.Cert)}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	defer s.Close()
	addr := s.Addr().String()
	_, port, _ := net.SplitHostPort(addr)

	for _, c := range []struct {
		name                    string
		node, cert, key, caFile string
		want                    []string
	}{
		{"a server certificate as client certificate", addr, nodePEM, nodeKey, caPEM,
			[]string{"the node refused your client certificate " + nodePEM, "CN=n1", "carries no management role", "ca issue client --role"}},
		{"an expired client certificate", addr, oldPEM, oldKey, caPEM,
			[]string{"the node refused your client certificate " + oldPEM, "CN=old", "expired", "ca verify --dir CA_DIR --use client " + oldPEM}},
		{"a revoked client certificate", addr, revokedPEM, revokedKey, caPEM,
			[]string{"the node refused your client certificate " + revokedPEM, "CN=gone", "has revoked it"}},
		{"the wrong project CA", addr, robotPEM, robotKey, otherPEM,
			[]string{"the node's certificate was refused", "does not chain to the CA in " + otherPEM}},
		{"a name the node's certificate is not for", "localhost:" + port, robotPEM, robotKey, caPEM,
			[]string{"the node's certificate is not for localhost", "--node"}},
	} {
		code, out, errOut := exec2("status", "--node", c.node, "--cert", c.cert, "--key", c.key, "--ca", c.caFile)
		for _, w := range c.want {
			if code != 1 || !strings.Contains(errOut, w) {
				t.Errorf("%s: exit %d, want 1 and %q\nstdout: %s\nstderr: %s", c.name, code, w, out, errOut)
				break
			}
		}
	}
	// And the right ones work.
	if code, out, errOut := exec2("status", "--node", addr, "--cert", robotPEM, "--key", robotKey, "--ca", caPEM); code != 0 || !strings.Contains(out, "node n1") {
		t.Fatalf("status: exit %d\n%s%s", code, out, errOut)
	}
}
