package ipsec

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/pki"
)

// A keying peer must present a node certificate of the project CA that
// names the peer the config expects.
func TestVerifyPeer(t *testing.T) {
	ca, err := pki.Init(filepath.Join(t.TempDir(), "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.Init(filepath.Join(t.TempDir(), "other"), "evil", "")
	good, _ := ca.IssueNode(pki.NodeRequest{Name: "db-2", IPs: []net.IP{net.ParseIP("10.0.0.2")}})
	wrongName, _ := ca.IssueNode(pki.NodeRequest{Name: "db-9"})
	foreign, _ := other.IssueNode(pki.NodeRequest{Name: "db-2"})
	client, _ := ca.IssueClient("db-2", pki.RoleControlPlane, "", 0)
	m := &Manager{o: Options{CA: ca.Cert}}
	p := &peerState{Peer: Peer{Name: "db-2", Addr: netip.MustParseAddr("10.0.0.2")}}
	check := m.verifyPeer(p)
	state := func(i *pki.Issued) tls.ConnectionState {
		return tls.ConnectionState{PeerCertificates: []*x509.Certificate{i.Cert}}
	}
	if err := check(state(good)); err != nil {
		t.Fatalf("the right peer: %v", err)
	}
	for name, c := range map[string]*pki.Issued{"wrong name": wrongName, "another CA": foreign, "a client certificate": client} {
		if err := check(state(c)); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if err := check(tls.ConnectionState{}); err == nil || !strings.Contains(err.Error(), "no certificate") {
		t.Errorf("no certificate: %v", err)
	}
	m.o.Revoked = []string{pki.SerialHex(good.Cert)}
	if err := check(state(good)); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("revoked: %v", err)
	}
}

// Both ends of one TLS session derive the same keys; the two directions
// differ; any change of address, SPI or generation changes them.
func TestKeysBothEndsAgree(t *testing.T) {
	ca, _ := pki.Init(filepath.Join(t.TempDir(), "ca"), "acme", "")
	node, _ := ca.IssueNode(pki.NodeRequest{Name: "db-1"})
	cert, _ := tls.X509KeyPair(node.CertPEM, node.KeyPEM)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	c1, c2 := net.Pipe()
	srv := tls.Server(c1, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	cli := tls.Client(c2, &tls.Config{RootCAs: pool, ServerName: "db-1", MinVersion: tls.VersionTLS13})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	derive := func(cs tls.ConnectionState, a, b netip.Addr, si, sr uint32, gen uint64) ([]byte, []byte) {
		k1, k2, err := keys(cs, a, b, si, sr, gen)
		if err != nil {
			t.Fatal(err)
		}
		return k1, k2
	}
	i1, i2 := derive(cli.ConnectionState(), a, b, 0x100, 0x200, 1)
	r1, r2 := derive(srv.ConnectionState(), a, b, 0x100, 0x200, 1)
	if string(i1) != string(r1) || string(i2) != string(r2) {
		t.Fatal("the two ends derived different keys")
	}
	if string(i1) == string(i2) || len(i1) != aeadKeyLen {
		t.Fatal("the directions share a key, or a key has the wrong length")
	}
	for _, alt := range [][]byte{
		first(derive(cli.ConnectionState(), b, a, 0x100, 0x200, 1)),
		first(derive(cli.ConnectionState(), a, b, 0x101, 0x200, 1)),
		first(derive(cli.ConnectionState(), a, b, 0x100, 0x200, 2)),
	} {
		if string(alt) == string(i1) {
			t.Fatal("a different context gave the same key")
		}
	}
}

func first(a, _ []byte) []byte { return a }
