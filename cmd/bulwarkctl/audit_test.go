package main

import (
	"bytes"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/mgmt"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

// auditNode runs a management API over log and returns the node flags
// to reach it.
func auditNode(t *testing.T, log *audit.Log) []string {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	n, _ := ca.IssueNode(pki.NodeRequest{Name: "n1", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	op, _ := ca.IssueClient("alice", pki.RoleOperator, "", 0)
	pair, err := tls.X509KeyPair(n.CertPEM, n.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "alice.pem"), op.CertPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "alice.key"), op.KeyPEM, 0o600)
	s, err := mgmt.Listen(mgmt.Options{Addr: "127.0.0.1:0", CA: ca.Cert, Cert: pair, Audit: log, Node: &node{}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Close() })
	return []string{"--node", s.Addr().String(), "--cert", filepath.Join(dir, "alice.pem"), "--key", filepath.Join(dir, "alice.key"), "--ca", filepath.Join(dir, "ca", "ca.pem")}
}

// With an audit file the fetched copy is the whole chain from genesis.
func TestAuditFetchFromFile(t *testing.T) {
	log := audit.New(nil)
	log.Append(audit.KindBoot, "", "", "init started", "ok")
	file := filepath.Join(t.TempDir(), "audit.log")
	if err := log.Attach(file); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		log.Append(audit.KindRequest, "x", "", "call", "ok")
	}
	flags := auditNode(t, log)
	got := filepath.Join(t.TempDir(), "fetched.log")
	if out := ctl(t, 0, append([]string{"audit", "fetch", "-o", got}, flags...)...); strings.Contains(out, "warning") {
		t.Fatal(out)
	}
	b, _ := os.ReadFile(got)
	onNode, _ := os.ReadFile(file)
	// The copy is the file as it was when it was taken: up to this
	// fetch's started record (its result came after).
	if !bytes.HasPrefix(onNode, b) || !bytes.HasPrefix(b, []byte(`{"seq":1,`)) {
		t.Fatalf("the fetched copy is not the file from genesis:\n%s", b)
	}
	if out := ctl(t, 0, "audit", "verify", got); !strings.Contains(out, "22 records, chain intact") {
		t.Fatal(out)
	}
}

// A node without an audit file keeps only its latest records: the fetch
// says so, the copy verifies from the anchor the node gives, and not from
// genesis.
func TestAuditFetchMemoryOnly(t *testing.T) {
	log := audit.New(nil)
	const n = audit.DefaultMemoryRecords + 100
	for i := 0; i < n; i++ {
		log.Append(audit.KindRequest, "x", "", "call", "ok")
	}
	flags := auditNode(t, log)
	got := filepath.Join(t.TempDir(), "fetched.log")
	out := ctl(t, 0, append([]string{"audit", "fetch", "-o", got}, flags...)...)
	// The copy holds the latest DefaultMemoryRecords records: this
	// fetch's started record pushed out one more.
	first := n + 1 - audit.DefaultMemoryRecords + 1
	if !strings.Contains(out, "warning: this copy begins at record ") || !strings.Contains(out, "--start ") {
		t.Fatal(out)
	}
	i := strings.Index(out, "--anchor ")
	anchor := strings.TrimSpace(out[i+len("--anchor "):])
	start := strings.TrimSpace(out[strings.Index(out, "--start ")+len("--start ") : i])
	if start != strconv.Itoa(first) || len(anchor) != 64 {
		t.Fatalf("start %q anchor %q; want start %d\n%s", start, anchor, first, out)
	}
	if out := ctl(t, 1, "audit", "verify", got); !strings.Contains(out, "where 1 belongs") {
		t.Fatal(out)
	}
	if out := ctl(t, 0, "audit", "verify", got, "--start", start, "--anchor", anchor); !strings.Contains(out, "chain intact from the anchor") {
		t.Fatal(out)
	}
	if out := ctl(t, 0, "audit", "verify", got, "--start", start); !strings.Contains(out, "not checked") {
		t.Fatal(out)
	}
	if out := ctl(t, 1, "audit", "verify", got, "--start", start, "--anchor", audit.Genesis); !strings.Contains(out, "not the anchor") {
		t.Fatal(out)
	}
	ctl(t, 2, "audit", "verify", got, "--anchor", "abc")
}
