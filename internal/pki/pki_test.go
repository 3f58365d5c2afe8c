package pki

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCAAndCertificates(t *testing.T) {
	for _, kt := range []string{ECDSAP256, RSA3072} {
		t.Run(kt, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			ca, err := Init(dir, "acme", kt)
			if err != nil {
				t.Fatal(err)
			}
			// Owner-only key, and a second Init refuses to overwrite.
			st, _ := os.Stat(filepath.Join(dir, CAKeyFile))
			dst, _ := os.Stat(dir)
			if st.Mode().Perm() != 0o600 || dst.Mode().Perm() != 0o700 {
				t.Fatalf("modes: key %v dir %v", st.Mode().Perm(), dst.Mode().Perm())
			}
			if _, err := Init(dir, "acme", kt); err == nil {
				t.Fatal("second Init succeeded")
			}
			if !ca.Cert.IsCA || ca.Cert.Subject.CommonName != "acme project CA" || !ca.Cert.MaxPathLenZero {
				t.Fatalf("CA: %+v", ca.Cert.Subject)
			}
			switch k := ca.Cert.PublicKey.(type) {
			case *ecdsa.PublicKey:
				if kt != ECDSAP256 || k.Curve.Params().Name != "P-256" {
					t.Fatal("key type")
				}
			case *rsa.PublicKey:
				if kt != RSA3072 || k.N.BitLen() != 3072 {
					t.Fatal("key type")
				}
			}
			node, err := ca.IssueNode(NodeRequest{Name: "db-1.example", IPs: []net.IP{net.ParseIP("10.0.0.5")}, KeyType: kt})
			if err != nil {
				t.Fatal(err)
			}
			c := node.Cert
			if !slices.Equal(c.DNSNames, []string{"db-1.example"}) || len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(net.ParseIP("10.0.0.5")) {
				t.Fatalf("SANs %v %v", c.DNSNames, c.IPAddresses)
			}
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) || c.IsCA {
				t.Fatalf("node EKUs %v", c.ExtKeyUsage)
			}
			if v := c.NotAfter.Sub(c.NotBefore); v < NodeValidity || v > NodeValidity+time.Hour {
				t.Fatalf("node validity %v", v)
			}
			if err := Verify(ca.Cert, c, x509.ExtKeyUsageServerAuth, nil, time.Now()); err != nil {
				t.Fatal(err)
			}
			cl, err := ca.IssueClient("alice", RoleOperator, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			if Role(cl.Cert) != RoleOperator || !slices.Equal(cl.Cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Fatalf("client role %q EKU %v", Role(cl.Cert), cl.Cert.ExtKeyUsage)
			}
			// A client certificate is no server certificate.
			if err := Verify(ca.Cert, cl.Cert, x509.ExtKeyUsageServerAuth, nil, time.Now()); err == nil {
				t.Fatal("client certificate verified for server use")
			}
			// Expired, revoked and foreign certificates fail.
			if err := Verify(ca.Cert, cl.Cert, x509.ExtKeyUsageClientAuth, nil, time.Now().Add(8*24*time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
				t.Fatalf("expired: %v", err)
			}
			if err := Verify(ca.Cert, cl.Cert, x509.ExtKeyUsageClientAuth, []string{SerialHex(cl.Cert)}, time.Now()); err == nil || !strings.Contains(err.Error(), "revoked") {
				t.Fatalf("revoked: %v", err)
			}
			other, _ := Init(filepath.Join(t.TempDir(), "other"), "evil", "")
			if err := Verify(other.Cert, cl.Cert, x509.ExtKeyUsageClientAuth, nil, time.Now()); err == nil {
				t.Fatal("verified against another CA")
			}
			// Keys round-trip; a loaded CA is the same CA.
			if _, err := ParseKey(node.KeyPEM); err != nil {
				t.Fatal(err)
			}
			again, err := Load(dir)
			if err != nil || !again.Cert.Equal(ca.Cert) {
				t.Fatalf("Load: %v", err)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := Init(dir, "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.IssueClient("bob", "root", "", 0); err == nil || !strings.Contains(err.Error(), `role "root"`) {
		t.Fatalf("bad role: %v", err)
	}
	if _, err := Init(t.TempDir(), "x", "dsa-1024"); err == nil || !strings.Contains(err.Error(), "dsa-1024") {
		t.Fatalf("bad key type: %v", err)
	}
	if _, err := ca.IssueNode(NodeRequest{}); err == nil {
		t.Fatal("node without a name")
	}
	os.Chmod(filepath.Join(dir, CAKeyFile), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("world-readable key: %v", err)
	}
}

func TestParsePool(t *testing.T) {
	a, err := Init(t.TempDir(), "a", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Init(t.TempDir(), "b", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := ParsePool(append(append([]byte{}, a.PEM...), b.PEM...))
	if err != nil {
		t.Fatal(err)
	}
	for _, ca := range []*CA{a, b} {
		if _, err := ca.Cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
			t.Errorf("%s not in the pool: %v", ca.Cert.Subject, err)
		}
	}
	for name, bad := range map[string][]byte{
		"empty":         nil,
		"a key":         append(append([]byte{}, a.PEM...), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})...),
		"trailing text": append(append([]byte{}, a.PEM...), "hello"...),
		"bad DER":       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}),
	} {
		if _, err := ParsePool(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
