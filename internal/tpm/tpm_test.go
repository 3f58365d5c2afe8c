package tpm

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
)

func TestCombine(t *testing.T) {
	k, tp := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a, b := make([]byte, 64), make([]byte, 64)
	if err := Combine(k, tp, "volume key", a); err != nil {
		t.Fatal(err)
	}
	Combine(k, tp, "volume key", b)
	if !bytes.Equal(a, b) {
		t.Fatal("the combiner is not a function of its inputs")
	}
	// Each input and the label change the output.
	for name, args := range map[string][3][]byte{
		"kernel": {bytes.Repeat([]byte{3}, 32), tp, []byte("volume key")},
		"tpm":    {k, bytes.Repeat([]byte{3}, 32), []byte("volume key")},
		"label":  {k, tp, []byte("keyslot passphrase")},
	} {
		c := make([]byte, 64)
		Combine(args[0], args[1], string(args[2]), c)
		if bytes.Equal(a, c) {
			t.Errorf("changing the %s input left the output unchanged", name)
		}
	}
	// Neither input appears in the output, and an all-zero TPM input
	// (a hostile TPM) still gives an output that differs from the
	// kernel's bytes.
	zero := make([]byte, 64)
	Combine(k, make([]byte, 32), "x", zero)
	if bytes.Contains(zero, k[:16]) || bytes.Contains(a, tp[:16]) {
		t.Fatal("an input shows through")
	}
	if err := Combine(k[:16], tp, "x", a); err == nil {
		t.Fatal("a 16-byte kernel input was accepted")
	}
}

func TestReplay(t *testing.T) {
	log := []Event{NewEvent(EventConfig, "fw_cfg", []byte("{}")), NewEvent(EventFirewall, "inet bulwark", []byte("rules")), NewEvent(EventLUKS2, "data", []byte("hdr"))}
	a, err := Replay(log)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := Replay(log[:2]); a == b {
		t.Fatal("dropping an event left the PCR unchanged")
	}
	for i := range log {
		for _, change := range []func(*Event){
			func(e *Event) { e.Kind += "x" },
			func(e *Event) { e.Name += "x" },
			func(e *Event) { e.SHA256 = strings.Repeat("0", 64) },
		} {
			alt := append([]Event(nil), log...)
			change(&alt[i])
			if b, _ := Replay(alt); a == b {
				t.Fatalf("altering event %d left the PCR unchanged", i)
			}
		}
	}
	swapped := []Event{log[1], log[0], log[2]}
	if b, _ := Replay(swapped); a == b {
		t.Fatal("reordering events left the PCR unchanged")
	}
	if _, err := Replay([]Event{{Kind: "x", SHA256: "zz"}}); err == nil {
		t.Fatal("a bad digest was accepted")
	}
}

// TestSwtpm measures, quotes and verifies against a real (software) TPM,
// and checks that each kind of forgery is refused.
func TestSwtpm(t *testing.T) {
	tp := startSwtpm(t)
	r1, err := tp.Random(48)
	if err != nil || len(r1) != 48 {
		t.Fatalf("Random: %d bytes, %v", len(r1), err)
	}
	if r2, _ := tp.Random(48); bytes.Equal(r1, r2) {
		t.Fatal("the TPM gave the same random bytes twice")
	}
	before, err := tp.PCRValue()
	if err != nil || !bytes.Equal(before, make([]byte, 32)) {
		t.Fatalf("PCR %d before any measurement: %x %v", PCR, before, err)
	}
	for _, e := range []Event{NewEvent(EventConfig, "fw_cfg", []byte(`{"version":1}`)), NewEvent(EventFirewall, "inet bulwark", []byte("ruleset")), NewEvent(EventLUKS2, "data", []byte("header"))} {
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
	fp, err := Verify(q, nonce, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(q, nonce, fp); err != nil {
		t.Fatalf("pinned: %v", err)
	}
	// The AK is the same key when made again (pinnable per TPM).
	first := hex.EncodeToString(tp.AKPublic())
	tp.CreateAK()
	if hex.EncodeToString(tp.AKPublic()) != first {
		t.Fatal("the attestation key changed when made again")
	}

	other := make([]byte, 32)
	rand.Read(other)
	clone := func() *Quote {
		c := *q
		c.Events = append([]Event(nil), q.Events...)
		c.Attest = bytes.Clone(q.Attest)
		c.Signature = bytes.Clone(q.Signature)
		return &c
	}
	for _, tc := range []struct {
		name  string
		q     *Quote
		nonce []byte
		pin   string
		want  string
	}{
		{"replayed (old nonce)", q, other, "", "replayed"},
		{"event altered", func() *Quote { c := clone(); c.Events[0].SHA256 = strings.Repeat("a", 64); return c }(), nonce, "", "event log replays"},
		{"event dropped", func() *Quote { c := clone(); c.Events = c.Events[:2]; return c }(), nonce, "", "event log replays"},
		{"pcr value changed", func() *Quote { c := clone(); c.PCRSHA256 = strings.Repeat("0", 64); return c }(), nonce, "", "not the one the TPM signed"},
		{"quote altered", func() *Quote { c := clone(); c.Attest[len(c.Attest)-1] ^= 1; return c }(), nonce, "", "signature does not verify"},
		{"other AK pinned", q, nonce, strings.Repeat("b", 64), "not the pinned key"},
	} {
		if _, err := Verify(tc.q, tc.nonce, tc.pin); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := tp.Quote([]byte("short")); err == nil {
		t.Error("a 5-byte nonce was accepted")
	}
}
