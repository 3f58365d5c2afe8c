package mgmt

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

type fakeNode struct {
	mu       sync.Mutex
	clients  []string
	shutdown string
	backup   func() error // nil: backups are not available
}

func (n *fakeNode) Status() any { return map[string]string{"state": "ready"} }
func (n *fakeNode) Allowlist() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.clients
}
func (n *fakeNode) SetAllowlist(e []string) (string, error) {
	for _, x := range e {
		if x == "bad" {
			return "", errors.New(`clients[0]: "bad" is neither an address nor a network prefix`)
		}
	}
	n.mu.Lock()
	n.clients = e
	n.mu.Unlock()
	if len(e) == 0 {
		return "empty", nil
	}
	return "", nil
}
func (n *fakeNode) Backup() error {
	if n.backup != nil {
		return n.backup()
	}
	return ErrNotAvailable
}
func (n *fakeNode) Rekey() error { return ErrNotAvailable }
func (n *fakeNode) Attest(nonce []byte) (any, error) {
	return nil, ErrNotAvailable
}
func (n *fakeNode) Shutdown(reason string) {
	n.mu.Lock()
	n.shutdown = reason
	n.mu.Unlock()
}

type env struct {
	s     *Server
	node  *fakeNode
	log   *audit.Log
	pool  *x509.CertPool
	certs map[string]tls.Certificate
}

func setup(t *testing.T) *env {
	t.Helper()
	ca, err := pki.Init(filepath.Join(t.TempDir(), "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.Init(filepath.Join(t.TempDir(), "other"), "evil", "")
	node, _ := ca.IssueNode(pki.NodeRequest{Name: "n1", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	pair := func(i *pki.Issued) tls.Certificate {
		c, err := tls.X509KeyPair(i.CertPEM, i.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	certs := map[string]tls.Certificate{}
	cp, _ := ca.IssueClient("robot", pki.RoleControlPlane, "", 0)
	op, _ := ca.IssueClient("alice", pki.RoleOperator, "", 0)
	rev, _ := ca.IssueClient("mallory", pki.RoleControlPlane, "", 0)
	foreign, _ := other.IssueClient("eve", pki.RoleControlPlane, "", 0)
	expired, _ := ca.IssueClient("old", pki.RoleControlPlane, "", time.Minute)
	nodeAsClient := pair(node) // a node certificate has no role
	certs["control"], certs["operator"], certs["revoked"], certs["foreign"], certs["expired"], certs["norole"] =
		pair(cp), pair(op), pair(rev), pair(foreign), pair(expired), nodeAsClient
	e := &env{node: &fakeNode{clients: []string{"0.0.0.0/0"}}, log: audit.New(nil), certs: certs}
	e.pool = x509.NewCertPool()
	e.pool.AddCert(ca.Cert)
	s, err := Listen(Options{Addr: "127.0.0.1:0", CA: ca.Cert, Cert: pair(node), Revoked: []string{pki.SerialHex(rev.Cert)},
		Audit: e.log, Node: e.node, now: func() time.Time { return time.Now().Add(10 * time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Close() })
	e.s = s
	return e
}

func (e *env) call(t *testing.T, who, method, path, body string) (int, string, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1"}
	if c, ok := e.certs[who]; ok {
		cfg.Certificates = []tls.Certificate{c}
	}
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
	req, _ := http.NewRequest(method, "https://"+e.s.Addr().String()+path, strings.NewReader(body))
	resp, err := cl.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func TestAccessControlAndAudit(t *testing.T) {
	e := setup(t)
	// Allowed calls.
	if code, body, err := e.call(t, "operator", "GET", "/v1/status", ""); err != nil || code != 200 || !strings.Contains(body, "ready") {
		t.Fatalf("operator status: %d %s %v", code, body, err)
	}
	code, body, err := e.call(t, "control", "PUT", "/v1/allowlist", `{"clients":["10.0.0.0/8"]}`)
	if err != nil || code != 200 || !strings.Contains(body, "10.0.0.0/8") {
		t.Fatalf("control-plane allowlist: %d %s %v", code, body, err)
	}
	// Refused: wrong role, bad input, unavailable, no wipe.
	for _, c := range []struct {
		who, method, path, body string
		code                    int
		want                    string
	}{
		{"operator", "PUT", "/v1/allowlist", `{"clients":["1.2.3.4"]}`, 403, `role \"operator\" may not`},
		{"control", "PUT", "/v1/allowlist", `{"clients":["bad"]}`, 400, "neither an address"},
		{"control", "PUT", "/v1/allowlist", `{"client":["1.2.3.4"]}`, 400, "unknown field"},
		{"control", "POST", "/v1/backup", ``, 501, "not available"},
		{"control", "POST", "/v1/shutdown", `{"wipe": false}`, 400, "wipe"},
		{"operator", "POST", "/v1/shutdown", `{"wipe": true}`, 403, "may not"},
		{"control", "GET", "/v1/shell", ``, 404, "no such call"},
	} {
		code, body, err := e.call(t, c.who, c.method, c.path, c.body)
		if err != nil || code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s %s %s: %d %s %v; want %d %q", c.who, c.method, c.path, code, body, err, c.code, c.want)
		}
	}
	if got := e.node.Allowlist(); len(got) != 1 || got[0] != "10.0.0.0/8" {
		t.Fatalf("a refused call changed the allowlist: %v", got)
	}
	// Refused handshakes: no certificate, another CA, revoked, expired, no role.
	for _, who := range []string{"nobody", "foreign", "revoked", "expired", "norole"} {
		if _, _, err := e.call(t, who, "GET", "/v1/status", ""); err == nil {
			t.Errorf("%s: the call went through", who)
		}
	}
	// Shutdown with wipe, by the control plane.
	if code, _, err := e.call(t, "control", "POST", "/v1/shutdown", `{"wipe": true}`); err != nil || code != 202 {
		t.Fatalf("shutdown: %d %v", code, err)
	}
	time.Sleep(400 * time.Millisecond)
	e.node.mu.Lock()
	reason := e.node.shutdown
	e.node.mu.Unlock()
	if !strings.Contains(reason, "CN=robot") {
		t.Fatalf("shutdown reason %q", reason)
	}

	// The audit log has every call and refusal, and verifies.
	code, logText, err := e.call(t, "operator", "GET", "/v1/audit", "")
	if err != nil || code != 200 {
		t.Fatal(code, err)
	}
	if _, _, err := audit.Verify(strings.NewReader(logText), ""); err != nil {
		t.Fatal(err)
	}
	var recs []audit.Record
	dec := json.NewDecoder(strings.NewReader(logText))
	for dec.More() {
		var r audit.Record
		dec.Decode(&r)
		recs = append(recs, r)
	}
	joined := func(f func(audit.Record) string) string {
		var b bytes.Buffer
		for _, r := range recs {
			b.WriteString(f(r) + "\n")
		}
		return b.String()
	}
	all := joined(func(r audit.Record) string { return r.Who + " | " + r.What + " | " + r.Result })
	for _, want := range []string{
		"CN=alice,OU=bulwark-role:operator,O=acme (operator)",
		"PUT /v1/allowlist [10.0.0.0/8] | 200 ok",
		`PUT /v1/allowlist | 403 refused: role "operator"`,
		"refused: no client certificate",
		"CN=eve,OU=bulwark-role:control-plane,O=evil from",
		"refused: serial",
		"expired",
		"refused: the certificate carries no management role",
		"POST /v1/shutdown | 202 ok",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("audit log lacks %q:\n%s", want, all)
		}
	}
}
