package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/tpm"
)

// attestRecord is what --save writes and `attest verify` reads: the nonce
// this operator sent and the node's answer.
type attestRecord struct {
	Nonce string     `json:"nonce"`
	Quote *tpm.Quote `json:"response"`
}

// attestCommand asks a node for a quote over a fresh nonce and verifies
// it; `attest verify FILE` verifies a saved one offline.
func attestCommand(args []string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "verify" {
		return attestVerifyFile(args[1:], stdout)
	}
	fs := newFlags("attest")
	nf := addNodeFlags(fs)
	cfg := fs.String("config", "", "the config the node should have booted with: the full file or its redacted form")
	pin := fs.String("ak", "", "the node's attestation key fingerprint (sha256 hex) to require")
	save := fs.String("save", "", "write the nonce and the node's answer to this file")
	c, err := connect(fs, nf, args)
	if err != nil {
		return err
	}
	nonce := make([]byte, 32)
	rand.Read(nonce)
	b, _, err := c.call("POST", "/v1/attest", map[string]string{"nonce": hex.EncodeToString(nonce)})
	if err != nil {
		return err
	}
	var q tpm.Quote
	if err := json.Unmarshal(b, &q); err != nil {
		return fmt.Errorf("the node's answer does not parse: %w", err)
	}
	rec := attestRecord{Nonce: hex.EncodeToString(nonce), Quote: &q}
	if *save != "" {
		out, _ := json.MarshalIndent(rec, "", "  ")
		if err := os.WriteFile(*save, out, 0o644); err != nil {
			return err
		}
	}
	return checkAttestation(rec, *cfg, *pin, stdout)
}

func attestVerifyFile(args []string, stdout io.Writer) error {
	fs := newFlags("attest verify")
	cfg := fs.String("config", "", "the config the node should have booted with: the full file or its redacted form")
	pin := fs.String("ak", "", "the attestation key fingerprint to require")
	nonce := fs.String("nonce", "", "the nonce the answer must be for (default: the one saved with it)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"attest verify: give the saved answer's file"}
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var rec attestRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.Quote == nil {
		return fmt.Errorf("%s is not a saved attestation: %v", fs.Arg(0), err)
	}
	if *nonce != "" {
		rec.Nonce = *nonce
	}
	return checkAttestation(rec, *cfg, *pin, stdout)
}

// checkAttestation prints what matched and what did not; any mismatch is
// an error (exit code 1).
func checkAttestation(rec attestRecord, cfgFile, pin string, stdout io.Writer) error {
	nonce, err := hex.DecodeString(rec.Nonce)
	if err != nil {
		return usageError{"the nonce is not hex"}
	}
	q := rec.Quote
	fp, err := tpm.Verify(q, nonce, pin)
	if err != nil {
		fmt.Fprintf(stdout, "FAIL quote: %v\n", err)
		return errors.New("attestation failed")
	}
	pinned := " (not pinned: pass --ak to require this key)"
	if pin != "" {
		pinned = " (pinned)"
	}
	fmt.Fprintf(stdout, "ok   quote signed by attestation key sha256:%s%s\n", fp, pinned)
	fmt.Fprintf(stdout, "ok   over this request's nonce %s…\n", rec.Nonce[:min(16, len(rec.Nonce))])
	fmt.Fprintf(stdout, "ok   PCR %d = %s, which the event log replays to:\n", q.PCR, q.PCRSHA256)
	var cfgEvent *tpm.Event
	for i, e := range q.Events {
		fmt.Fprintf(stdout, "       %d. %s %s sha256:%s\n", i+1, e.Kind, e.Name, e.SHA256)
		if e.Kind == tpm.EventConfig && cfgEvent == nil {
			cfgEvent = &q.Events[i]
		}
	}
	if cfgFile == "" {
		fmt.Fprintln(stdout, "note no --config given: the config digest was not compared")
		return nil
	}
	doc, err := os.ReadFile(cfgFile)
	if err != nil {
		return err
	}
	// The node measured the config's canonical redacted form; the file may
	// be the full config (whose secrets are then committed to here, as the
	// node did) or that redacted form.
	canon, err := config.Canonical(doc)
	clear(doc) // it may hold the node's secrets
	if err != nil {
		fmt.Fprintf(stdout, "FAIL config: %s: %v\n", cfgFile, err)
		return errors.New("attestation failed")
	}
	want := config.Digest(canon)
	switch {
	case cfgEvent == nil:
		fmt.Fprintln(stdout, "FAIL config: the event log has no config event")
	case cfgEvent.SHA256 != want:
		fmt.Fprintf(stdout, "FAIL config digest: the node booted with sha256:%s, %s (redacted) is sha256:%s\n", cfgEvent.SHA256, cfgFile, want)
	default:
		fmt.Fprintf(stdout, "ok   config digest sha256:%s is that of %s (redacted)\n", want, cfgFile)
		return nil
	}
	return errors.New("attestation failed")
}
