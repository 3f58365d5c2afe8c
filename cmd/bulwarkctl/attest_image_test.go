package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/imagebuild"
	"github.com/bulwarkvm/bulwark/internal/tpm"
	"github.com/bulwarkvm/bulwark/internal/tpm/tpmtest"
)

// quoteEvents measures events on a software TPM and saves a quote over a
// fresh nonce as attest --save does.
func quoteEvents(t *testing.T, events []tpm.Event, saved string) {
	t.Helper()
	tp := tpm.New(tpmtest.Swtpm(t), "swtpm")
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
}

// TestAttestImage: attest verify --image passes with the build report of
// the system image the node measured, and fails with another build's, with
// a build without a system image, and for a node that booted without one;
// a node and a build that both have none agree.
func TestAttestImage(t *testing.T) {
	dir := t.TempDir()
	root := strings.Repeat("5a", 32)
	report := func(name, rootHash string) string {
		rep := imagebuild.Report{KernelVersion: "6.1.0-57-amd64"}
		if rootHash != "" {
			rep.SystemImage = &imagebuild.SystemImage{RootHash: rootHash, Packages: []imagebuild.SysPackage{
				{Name: "postgresql-15", Version: "15.20-0+deb12u1", Role: "requested"},
				{Name: "libc6", Version: "2.36-9+deb12u14", Role: "libraries"},
			}}
		}
		b, _ := json.Marshal(rep)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	right := report("right.json", root)
	other := report("other.json", strings.Repeat("5b", 32))
	none := report("none.json", "")

	base := []tpm.Event{
		tpm.NewEvent(tpm.EventConfig, "fw_cfg opt/bulwark/config", []byte("{}")),
		tpm.NewEvent(tpm.EventFirewall, "inet bulwark", []byte("ruleset")),
	}
	withImage := filepath.Join(dir, "with-image.json")
	quoteEvents(t, append(base, tpm.Event{Kind: tpm.EventSystemImage, Name: "/usr", SHA256: root}), withImage)
	without := filepath.Join(dir, "without.json")
	quoteEvents(t, base, without)

	verify := func(saved string, args ...string) (string, int) {
		var out, errb bytes.Buffer
		code := run(append([]string{"attest", "verify", saved}, args...), &out, &errb)
		return out.String() + errb.String(), code
	}
	if out, code := verify(withImage, "--image", right); code != 0 || !strings.Contains(out, "ok   system image root hash "+root+" is that of "+right+" (postgresql-15 15.20-0+deb12u1)") {
		t.Errorf("the right build report: exit %d\n%s", code, out)
	}
	for name, c := range map[string]struct {
		saved, report, want string
	}{
		"another build":           {withImage, other, "FAIL system image: the node runs root hash " + root},
		"a build without one":     {withImage, none, "FAIL system image: the build " + none + " has no system image"},
		"neither has one":         {without, none, "FAIL system image: the build " + none + " has no system image"},
		"a node booted without":   {without, right, "FAIL system image: the node booted without one"},
		"not a build report file": {withImage, withImage, "FAIL system image:"},
	} {
		out, code := verify(c.saved, "--image", c.report)
		if code != 1 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, want 1 and %q:\n%s", name, code, c.want, out)
		}
	}
	if out, code := verify(withImage); code != 0 || !strings.Contains(out, "note no --image given") {
		t.Errorf("without --image: exit %d\n%s", code, out)
	}
	if _, code := verify(withImage, "--image", filepath.Join(dir, "missing.json")); code == 0 {
		t.Error("a build report that does not exist passed")
	}
}
