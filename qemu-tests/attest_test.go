package qemutests

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// TestAttestation boots a node with a TPM (swtpm) and an encrypted
// volume, and checks it from outside with bulwarkctl attest: the quote
// verifies against the redacted config (bulwarkctl config redact, which
// holds no TLS key) and the pinned attestation key, and the node's console
// names the redacted form's digest; the full config verifies the saved
// answer too; the full config with its TLS key changed, the redacted one
// with the key's commitment changed, and a config one allowlist entry away
// fail naming the config digest; a replayed answer (old nonce) fails; an
// answer whose event log has one entry altered fails.
func TestAttestation(t *testing.T) {
	img := testImage(t)
	ctlBin := buildCtl(t)
	dir := t.TempDir()
	tlsSection := projectPKI(t, dir, map[string]string{"auditor": pki.RoleOperator})
	config := func(clients string) []byte {
		return []byte(fmt.Sprintf(`{"version": 1, "hostname": "db-1",
		"network": {"interfaces": [{"name": "eth0", "addresses": ["10.99.0.10/24"]}]},
		"firewall": {"clients": [%s], "management_sources": ["10.99.0.5"]},
		"tls": %s,
		"volumes": [{"name": "data", "serial": "data0", "mount": "/var/lib/data"}]}`, clients, tlsSection))
	}
	booted := config(`"10.99.0.20", "10.99.0.21"`)
	cfgFile, otherFile := filepath.Join(dir, "booted.json"), filepath.Join(dir, "other.json")
	os.WriteFile(cfgFile, booted, 0o600)
	os.WriteFile(otherFile, config(`"10.99.0.20", "10.99.0.22"`), 0o600)
	// The booted config with one secret changed: another TLS key.
	var sec struct{ Key string }
	json.Unmarshal(tlsSection, &sec)
	oldKey, _ := json.Marshal(sec.Key)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	newKey, _ := json.Marshal(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	changedFile := filepath.Join(dir, "changed-secret.json")
	changed := bytes.Replace(booted, oldKey, newKey, 1)
	if bytes.Equal(changed, booted) {
		t.Fatal("the TLS key is not in the booted config")
	}
	os.WriteFile(changedFile, changed, 0o600)

	n := harness.NewNet(t)
	ops := n.AddClient("10.99.0.5/24")
	vm := harness.Start(t, harness.Options{Name: "attest", Image: img, Config: booted, Net: n, TPM: true,
		Disks: []string{newDisk(t, dir, "d0", 64<<20)}})
	vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	vm.MustWaitFor(`^bulwark:   entropy +ok .*kernel RNG ready.*, TPM 2.0 at /dev/tpmrm0 mixed into every key$`, time.Second)
	vm.MustWaitFor(`^bulwark:   measure +ok .*PCR 15: 4 events \(config, firewall ruleset, 1 LUKS2 headers, system image\)`, time.Second)
	akLine := vm.MustWaitFor(`^bulwark: attestation key sha256:[0-9a-f]{64}$`, time.Second)
	ak := regexp.MustCompile(`[0-9a-f]{64}`).FindString(akLine.Text)

	op := operator{t: t, from: ops, bin: ctlBin, dir: dir, caFile: filepath.Join(dir, "ca", "ca.pem")}
	// The auditor gets the redacted config only: no TLS key in it, and
	// its SHA-256 is the digest the node says it measured.
	redacted, code := op.run("", "config", "redact", cfgFile)
	if code != 0 || strings.Contains(redacted, strings.Split(sec.Key, "\n")[1]) || !strings.Contains(redacted, `"key":"redacted:hmac-sha256:`) {
		t.Fatalf("config redact: exit %d\n%s", code, redacted)
	}
	redactedFile := filepath.Join(dir, "redacted.json")
	os.WriteFile(redactedFile, []byte(redacted), 0o644)
	vm.MustWaitFor(fmt.Sprintf(`^bulwark: config measured in its redacted form sha256:%x$`, sha256.Sum256([]byte(redacted))), time.Second)
	saved := filepath.Join(dir, "saved.json")
	out, code := op.run("auditor", "attest", "--config", redactedFile, "--ak", ak, "--save", saved)
	if code != 0 || !strings.Contains(out, "ok   config digest") || !strings.Contains(out, "(pinned)") || !strings.Contains(out, "3. luks2-header data") {
		t.Fatalf("attest against the redacted config: exit %d\n%s", code, out)
	}
	t.Logf("bulwarkctl attest:\n%s", out)
	if out, code := op.run("auditor", "attest", "--config", otherFile); code != 1 || !strings.Contains(out, "FAIL config digest: the node booted with sha256:") {
		t.Errorf("attest against a config one allowlist entry away: exit %d\n%s", code, out)
	}
	// One secret changed fails: in the full config, or its commitment in
	// the redacted one.
	if out, code := op.run("", "attest", "verify", saved, "--config", changedFile); code != 1 || !strings.Contains(out, "FAIL config digest: the node booted with sha256:") {
		t.Errorf("the saved answer against the config with another TLS key: exit %d\n%s", code, out)
	}
	commitment := regexp.MustCompile(`"key":"redacted:hmac-sha256:[0-9a-f]{64}"`).FindString(redacted)
	last := "0"
	if strings.HasSuffix(commitment, `0"`) {
		last = "1"
	}
	changedCommitment := filepath.Join(dir, "changed-commitment.json")
	os.WriteFile(changedCommitment, []byte(strings.Replace(redacted, commitment, commitment[:len(commitment)-2]+last+`"`, 1)), 0o644)
	if out, code := op.run("", "attest", "verify", saved, "--config", changedCommitment); code != 1 || !strings.Contains(out, "FAIL config digest: the node booted with sha256:") {
		t.Errorf("the saved answer against the redacted config with the key's commitment changed: exit %d\n%s", code, out)
	}
	if out, code := op.run("auditor", "attest", "--ak", strings.Repeat("0", 64)); code != 1 || !strings.Contains(out, "not the pinned key") {
		t.Errorf("attest with another key pinned: exit %d\n%s", code, out)
	}
	// A replay: the saved answer offered for a new request's nonce.
	if out, code := op.run("", "attest", "verify", saved, "--nonce", strings.Repeat("ab", 32)); code != 1 || !strings.Contains(out, "replayed") {
		t.Errorf("a replayed answer: exit %d\n%s", code, out)
	}
	// The saved answer verifies offline as it is, with the redacted
	// config or the full one ...
	for _, f := range []string{redactedFile, cfgFile} {
		if out, code := op.run("", "attest", "verify", saved, "--config", f); code != 0 || !strings.Contains(out, "ok   config digest") {
			t.Errorf("the saved answer with %s: exit %d\n%s", f, code, out)
		}
	}
	// ... and not with one event log entry altered.
	var rec map[string]any
	b, _ := os.ReadFile(saved)
	json.Unmarshal(b, &rec)
	events := rec["response"].(map[string]any)["events"].([]any)
	events[1].(map[string]any)["sha256"] = strings.Repeat("0", 64)
	altered := filepath.Join(dir, "altered.json")
	b, _ = json.Marshal(rec)
	os.WriteFile(altered, b, 0o644)
	if out, code := op.run("", "attest", "verify", altered, "--config", redactedFile); code != 1 || !strings.Contains(out, "event log replays") {
		t.Errorf("an altered event log: exit %d\n%s", code, out)
	}
	if out, _ := op.run("auditor", "status"); !strings.Contains(out, "tpm: TPM 2.0 at /dev/tpmrm0; PCR 15 holds 4 events; attestation key sha256:"+ak) {
		t.Errorf("status:\n%s", out)
	}
	if err := vm.PowerOff(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
}
