package main

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/internal/tpm"
	"github.com/bulwarkvm/bulwark/internal/tpm/tpmtest"
)

// secretConfig makes full node configs that differ only in their secrets:
// the TLS key (which must match the certificate for the node to boot) and
// the S3 secret key.
type secretConfig struct {
	ca, cert, backupKey, s3CA string
}

func newSecretConfig(t *testing.T) (*secretConfig, *pki.Issued, *pki.Issued) {
	t.Helper()
	ca, err := pki.Init(filepath.Join(t.TempDir(), "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	node, err := ca.IssueNode(pki.NodeRequest{Name: "db-1", IPs: []net.IP{net.ParseIP("10.99.0.10")}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.IssueNode(pki.NodeRequest{Name: "db-1", IPs: []net.IP{net.ParseIP("10.99.0.10")}})
	if err != nil {
		t.Fatal(err)
	}
	k, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	s3ca, err := pki.Init(filepath.Join(t.TempDir(), "s3"), "s3", pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return &secretConfig{
		ca: string(ca.PEM), cert: string(node.CertPEM),
		backupKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
		s3CA:      string(s3ca.PEM),
	}, node, other
}

func (s *secretConfig) doc(tlsKey, s3Secret string) []byte {
	q := func(v string) string { b, _ := json.Marshal(v); return string(b) }
	return []byte(fmt.Sprintf(`{
  "version": 1,
  "hostname": "db-1",
  "network": {"interfaces": [{"name": "eth0", "addresses": ["10.99.0.10/24"]}]},
  "volumes": [{"name": "data", "serial": "data0", "mount": "/var/lib/data"}],
  "workload": {"command": ["/usr/bin/x"], "uid": 70, "gid": 70},
  "firewall": {"clients": ["10.99.0.20"], "management_sources": ["10.99.0.5"],
    "egress": {"backup": [{"address": "10.99.0.40", "port": 9000}]}},
  "tls": {"ca": %s, "certificate": %s, "key": %s},
  "backup": {"region": "eu-north-1", "public_key": %s,
    "store": {"s3": {"endpoint": "https://10.99.0.40:9000", "bucket": "backups",
      "access_key": "AKIAEXAMPLE", "secret_key": %s, "ca": %s}},
    "sources": [{"kind": "spool", "path": "/var/lib/data/wal"}]}
}`, q(s.ca), q(s.cert), q(tlsKey), q(s.backupKey), q(s3Secret), q(s.s3CA)))
}

// bootAndQuote plays the node: it parses and validates doc as the init
// does, measures the events init/measure.go measures (the config's
// redacted form, then a ruleset and a LUKS2 header) on a software TPM,
// and saves a quote over a nonce as `attest --save` would.
func bootAndQuote(t *testing.T, doc []byte, saved string) tpm.Event {
	t.Helper()
	cfg, err := config.Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	measured, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	tp := tpm.New(tpmtest.Swtpm(t), "swtpm")
	events := []tpm.Event{
		tpm.NewEvent(tpm.EventConfig, "fw_cfg opt/bulwark/config", measured),
		tpm.NewEvent(tpm.EventFirewall, "inet bulwark", []byte("ruleset")),
		tpm.NewEvent(tpm.EventLUKS2, "data", []byte("header")),
	}
	for _, e := range events {
		if err := tp.Measure(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := tp.CreateAK(); err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, 32)
	rand.Read(nonce)
	q, err := tp.Quote(nonce)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(attestRecord{Nonce: hex.EncodeToString(nonce), Quote: q})
	if err := os.WriteFile(saved, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return events[0]
}

// TestAttestRedactedConfig: an auditor given only the redacted config
// verifies a node's quote; the full config verifies it too; a full config
// with one secret changed, or a redacted one with one commitment changed,
// fails it. The redacted config holds neither secret.
func TestAttestRedactedConfig(t *testing.T) {
	dir := t.TempDir()
	sc, node, other := newSecretConfig(t)
	const s3Secret = "minioadmin"
	full := sc.doc(string(node.KeyPEM), s3Secret)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fullFile := write("full.json", full)
	saved := filepath.Join(dir, "saved.json")
	event := bootAndQuote(t, full, saved)

	var out, errb bytes.Buffer
	if code := run([]string{"config", "redact", fullFile}, &out, &errb); code != 0 {
		t.Fatalf("config redact: exit %d: %s", code, errb.String())
	}
	redacted := out.Bytes()
	keyBody := strings.Split(string(node.KeyPEM), "\n")[1]
	if bytes.Contains(redacted, []byte(keyBody)) || bytes.Contains(redacted, []byte(s3Secret)) {
		t.Fatalf("the redacted config holds a secret:\n%s", redacted)
	}
	if n := bytes.Count(redacted, []byte(config.CommitmentPrefix)); n != 2 {
		t.Fatalf("%d commitments in the redacted config, want 2:\n%s", n, redacted)
	}
	// The file is the measured bytes themselves: sha256sum of it is the
	// config event's digest.
	if sum := sha256.Sum256(redacted); hex.EncodeToString(sum[:]) != event.SHA256 {
		t.Fatalf("the redacted file is sha256:%x, the node measured sha256:%s", sum, event.SHA256)
	}
	redactedFile := write("redacted.json", redacted)

	verify := func(cfgFile string) (string, int) {
		var out, errb bytes.Buffer
		code := run([]string{"attest", "verify", saved, "--config", cfgFile}, &out, &errb)
		return out.String() + errb.String(), code
	}
	// Formatting does not matter: the redacted config indented, with its
	// members in another (sorted) order.
	var tree map[string]any
	json.Unmarshal(redacted, &tree)
	reformatted, _ := json.MarshalIndent(tree, "", "\t")
	for name, f := range map[string]string{
		"redacted":             redactedFile,
		"full":                 fullFile,
		"redacted reformatted": write("reformatted.json", reformatted),
	} {
		if out, code := verify(f); code != 0 || !strings.Contains(out, "ok   config digest sha256:"+event.SHA256) {
			t.Errorf("the %s config: exit %d\n%s", name, code, out)
		}
	}

	// One secret changed fails, in a full config or as a commitment.
	var s3Commitment string
	for _, m := range tree["backup"].(map[string]any)["store"].(map[string]any)["s3"].(map[string]any) {
		if s, ok := m.(string); ok && config.IsCommitment(s) {
			s3Commitment = s
		}
	}
	if s3Commitment == "" {
		t.Fatalf("no S3 commitment found in\n%s", redacted)
	}
	last := "0"
	if strings.HasSuffix(s3Commitment, "0") {
		last = "1"
	}
	flipped := s3Commitment[:len(s3Commitment)-1] + last
	for name, doc := range map[string][]byte{
		"full, S3 secret key changed":         sc.doc(string(node.KeyPEM), s3Secret+"x"),
		"full, another TLS key":               sc.doc(string(other.KeyPEM), s3Secret),
		"redacted, S3 commitment changed":     bytes.Replace(redacted, []byte(s3Commitment), []byte(flipped), 1),
		"redacted, reformatted, then changed": bytes.Replace(reformatted, []byte(s3Commitment), []byte(flipped), 1),
	} {
		if bytes.Equal(doc, redacted) {
			t.Fatalf("%s: nothing was changed", name)
		}
		out, code := verify(write("changed.json", doc))
		if code != 1 || !strings.Contains(out, "FAIL config digest: the node booted with sha256:"+event.SHA256) {
			t.Errorf("%s: exit %d\n%s", name, code, out)
		}
	}

	// A secret in the clear beside a redacted TLS key has no commitment
	// anyone can compute: refused, naming the field.
	partial := bytes.Replace(redacted, []byte(s3Commitment), []byte(s3Secret), 1)
	if out, code := verify(write("partial.json", partial)); code != 1 || !strings.Contains(out, "backup.store.s3.secret_key is in the clear but tls.key is redacted") {
		t.Errorf("a partly redacted config: exit %d\n%s", code, out)
	}
	// Without tls the commitments would be plain hashes, which a guess
	// opens ("minioadmin"): config redact refuses to write them.
	var noTLS map[string]any
	json.Unmarshal(full, &noTLS)
	delete(noTLS, "tls")
	b, _ := json.Marshal(noTLS)
	out.Reset()
	errb.Reset()
	if code := run([]string{"config", "redact", write("notls.json", b)}, &out, &errb); code != 1 || out.Len() != 0 || !strings.Contains(errb.String(), "backup.store.s3.secret_key would be committed to without a key") {
		t.Errorf("config redact without tls: exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
	if code := run([]string{"config", "redact"}, &out, &errb); code != 2 {
		t.Errorf("config redact without a file: exit %d", code)
	}
}
