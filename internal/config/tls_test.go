package config

import (
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/pki"
)

func TestTLSAndFrontDoor(t *testing.T) {
	ca, err := pki.Init(filepath.Join(t.TempDir(), "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.Init(filepath.Join(t.TempDir(), "other"), "evil", "")
	node, _ := ca.IssueNode(pki.NodeRequest{Name: "n1", IPs: []net.IP{net.ParseIP("10.0.0.5")}})
	foreign, _ := other.IssueNode(pki.NodeRequest{Name: "n1"})
	client, _ := ca.IssueClient("alice", pki.RoleOperator, "", 0)
	doc := func(tls TLS, fd string) []byte {
		b, _ := json.Marshal(map[string]any{"version": 1, "hostname": "n1", "tls": tls})
		s := string(b)
		if fd != "" {
			s = strings.TrimSuffix(s, "}") + `,"front_door":[` + fd + `]}`
		}
		return []byte(s)
	}
	good := TLS{CA: string(ca.PEM), Certificate: string(node.CertPEM), Key: string(node.KeyPEM)}
	if _, err := Parse(doc(good, `{"port":5432,"protocol":"postgres","backend":"127.0.0.1:5433"}`)); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		tls  TLS
		fd   string
		want string
	}{
		{"foreign cert", TLS{CA: string(ca.PEM), Certificate: string(foreign.CertPEM), Key: string(foreign.KeyPEM)}, "", "tls.certificate: x509: certificate signed by unknown authority"},
		{"wrong key", TLS{CA: string(ca.PEM), Certificate: string(node.CertPEM), Key: string(foreign.KeyPEM)}, "", "tls.key: does not belong"},
		{"client cert as server", TLS{CA: string(ca.PEM), Certificate: string(client.CertPEM), Key: string(client.KeyPEM)}, "", "tls.certificate"},
		{"not a CA", TLS{CA: string(node.CertPEM), Certificate: string(node.CertPEM), Key: string(node.KeyPEM)}, "", "tls.ca: \"CN=n1,O=acme\" is not a CA"},
		{"garbage key", TLS{CA: string(ca.PEM), Certificate: string(node.CertPEM), Key: "secret-bytes"}, "", "tls.key: not a PEM"},
		{"revoked", TLS{CA: string(ca.PEM), Certificate: string(node.CertPEM), Key: string(node.KeyPEM), RevokedSerials: []string{pki.SerialHex(node.Cert)}}, "", "is revoked"},
		{"bad serial", TLS{CA: string(ca.PEM), Certificate: string(node.CertPEM), Key: string(node.KeyPEM), RevokedSerials: []string{"XYZ"}}, "", "tls.revoked_serials[0]"},
		{"port", good, `{"port":6432,"protocol":"postgres","backend":"127.0.0.1:5433"}`, "front_door[0].port: 6432 is not one of the client ports [5432]"},
		{"protocol", good, `{"port":5432,"protocol":"http","backend":"127.0.0.1:5433"}`, "front_door[0].protocol"},
		{"public backend", good, `{"port":5432,"protocol":"tls","backend":"10.0.0.5:5433"}`, "not a loopback address"},
		{"relative socket", good, `{"port":5432,"protocol":"tls","backend":"unix:run/pg.sock"}`, "absolute"},
	}
	for _, c := range cases {
		_, err := Parse(doc(c.tls, c.fd))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret-bytes") {
			t.Errorf("%s: the key's bytes are in the error", c.name)
		}
	}
	b, _ := json.Marshal(map[string]any{"version": 1, "hostname": "n1", "front_door": []map[string]any{{"port": 5432, "protocol": "tls", "backend": "127.0.0.1:1"}}})
	if _, err := Parse(b); err == nil || !strings.Contains(err.Error(), "needs the tls section") {
		t.Errorf("front door without tls: %v", err)
	}
}
