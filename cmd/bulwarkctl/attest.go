package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/imagebuild"
	"github.com/bulwarkvm/bulwark/internal/tpm"
)

// attestRecord is what --save writes and `attest verify` reads: the nonce
// this operator sent and the node's answer.
type attestRecord struct {
	Nonce string     `json:"nonce"`
	Quote *tpm.Quote `json:"response"`
}

func attestCmd() *cobra.Command {
	var cfg, pin, save, image string
	c := &cobra.Command{
		Use:   "attest",
		Short: "Ask a node for a TPM quote over a fresh nonce and check it",
		Long: `Sends the node a fresh random nonce and checks its TPM's answer (any role):
the quote's signature by the node's attestation key (pinned with --ak),
that it is over this nonce, PCR 15 replayed from the event log, and, with
--config, the config digest against the config the node should run (the
full file or its redacted form, bulwarkctl config redact: both give the
digest the node measured), and, with --image, the system image's root hash
against the build report of the image the node should run. Prints what
matched and what did not; exit 1 on any mismatch. --save keeps the answer
for attest verify.`,
		Example: `  bulwarkctl attest --config the-config-it-should-run.json --ak 3b0c… --node 10.0.0.10:9443 --ca ca.pem --cert auditor.pem --key auditor.key
  bulwarkctl attest --config redacted.json --image out/build-report.json --save answer.json`,
		Args: noArgs,
	}
	nf := addNodeFlags(c, "print the checks as JSON")
	c.Flags().StringVar(&cfg, "config", "", "the config `FILE` the node should have booted with: the full file or its redacted form")
	c.Flags().StringVar(&pin, "ak", "", "the node's attestation key `FINGERPRINT` (sha256 hex) to require")
	c.Flags().StringVar(&save, "save", "", "write the nonce and the node's answer to this `FILE`")
	c.Flags().StringVar(&image, "image", "", "the build report `FILE` (out/build-report.json) of the image the node should run")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := nf.client()
		if err != nil {
			return err
		}
		nonce := make([]byte, 32)
		rand.Read(nonce)
		b, _, err := cl.call("POST", "/v1/attest", map[string]string{"nonce": hex.EncodeToString(nonce)})
		if err != nil {
			return err
		}
		var q tpm.Quote
		if err := json.Unmarshal(b, &q); err != nil {
			return fmt.Errorf("the node's answer does not parse: %w", err)
		}
		rec := attestRecord{Nonce: hex.EncodeToString(nonce), Quote: &q}
		if save != "" {
			out, _ := json.MarshalIndent(rec, "", "  ")
			if err := os.WriteFile(save, out, 0o644); err != nil {
				return err
			}
		}
		return reportAttestation(rec, cfg, pin, image, nf.json, cmd.OutOrStdout())
	}
	c.AddCommand(attestVerifyCmd())
	return c
}

func attestVerifyCmd() *cobra.Command {
	var cfg, pin, nonce, image string
	var asJSON bool
	c := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check a saved attestation answer (attest --save) offline",
		Long: `Checks an answer saved with attest --save, as attest does: signature,
nonce (the one saved with it, or --nonce), PCR 15 replayed from the event
log, the config digest with --config, the system image with --image.`,
		Example: `  bulwarkctl attest verify answer.json --config redacted.json --ak 3b0c…
  bulwarkctl attest verify answer.json --nonce 9f86… --json`,
		Args: exactArgs(1, "give the saved answer's file"),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			var rec attestRecord
			if err := json.Unmarshal(b, &rec); err != nil || rec.Quote == nil {
				return fmt.Errorf("%s is not a saved attestation (bulwarkctl attest --save writes one): %v", args[0], err)
			}
			if nonce != "" {
				rec.Nonce = nonce
			}
			return reportAttestation(rec, cfg, pin, image, asJSON, cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&cfg, "config", "", "the config `FILE` the node should have booted with: the full file or its redacted form")
	c.Flags().StringVar(&pin, "ak", "", "the attestation key `FINGERPRINT` to require")
	c.Flags().StringVar(&nonce, "nonce", "", "the nonce (hex) the answer must be for (default: the one saved with it)")
	c.Flags().StringVar(&image, "image", "", "the build report `FILE` of the image the node should run")
	c.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	return c
}

// reportAttestation runs the checks and prints them as text, or as JSON
// (the same lines, with a verdict).
func reportAttestation(rec attestRecord, cfgFile, pin, image string, asJSON bool, stdout io.Writer) error {
	if !asJSON {
		return checkAttestation(rec, cfgFile, pin, image, stdout)
	}
	var text bytes.Buffer
	err := checkAttestation(rec, cfgFile, pin, image, &text)
	var ue usageError
	if errors.As(err, &ue) {
		return err
	}
	res := map[string]any{"ok": err == nil, "checks": strings.Split(strings.TrimSuffix(text.String(), "\n"), "\n")}
	if rec.Quote != nil {
		res["pcr"] = rec.Quote.PCR
		res["pcr_sha256"] = rec.Quote.PCRSHA256
		res["events"] = rec.Quote.Events
	}
	if perr := printJSON(stdout, res); perr != nil {
		return perr
	}
	return err
}

// checkAttestation prints what matched and what did not; any mismatch is
// an error (exit code 1).
func checkAttestation(rec attestRecord, cfgFile, pin, image string, stdout io.Writer) error {
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
	cfgErr := checkConfig(cfgEvent, cfgFile, stdout)
	imgErr := checkSystemImage(q.Events, image, stdout)
	for _, err := range []error{cfgErr, imgErr} {
		if err != nil && !errors.Is(err, errAttestation) {
			return err // a file that cannot be read
		}
	}
	if cfgErr != nil || imgErr != nil {
		return errAttestation
	}
	return nil
}

var errAttestation = errors.New("attestation failed")

// checkConfig compares the config event with the config file.
func checkConfig(cfgEvent *tpm.Event, cfgFile string, stdout io.Writer) error {
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
		return errAttestation
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
	return errAttestation
}

// checkSystemImage compares the node's system-image event (the root hash
// its init mapped /usr with) with the system image of a build report.
func checkSystemImage(events []tpm.Event, reportFile string, stdout io.Writer) error {
	if reportFile == "" {
		fmt.Fprintln(stdout, "note no --image given: the system image was not compared")
		return nil
	}
	b, err := os.ReadFile(reportFile)
	if err != nil {
		return err
	}
	var rep imagebuild.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		fmt.Fprintf(stdout, "FAIL system image: %s is not a build report: %v\n", reportFile, err)
		return errAttestation
	}
	var got []tpm.Event
	for _, e := range events {
		if e.Kind == tpm.EventSystemImage {
			got = append(got, e)
		}
	}
	si := rep.SystemImage
	// Every build has a system image and every node boots with one, so a
	// report or an event log without one proves nothing and fails.
	switch {
	case si == nil:
		fmt.Fprintf(stdout, "FAIL system image: the build %s has no system image (not a report of a bulwark build that nodes can boot)\n", reportFile)
	case len(got) == 0:
		fmt.Fprintf(stdout, "FAIL system image: the node booted without one (no %s event); the build has root hash %s\n", tpm.EventSystemImage, si.RootHash)
	case len(got) > 1:
		fmt.Fprintf(stdout, "FAIL system image: the event log has %d %s events\n", len(got), tpm.EventSystemImage)
	case got[0].SHA256 != si.RootHash:
		fmt.Fprintf(stdout, "FAIL system image: the node runs root hash %s, the build %s has %s\n", got[0].SHA256, reportFile, si.RootHash)
	default:
		var pkgs []string
		for _, p := range si.Packages {
			if p.Role == "requested" {
				pkgs = append(pkgs, p.Name+" "+p.Version)
			}
		}
		fmt.Fprintf(stdout, "ok   system image root hash %s is that of %s (%s)\n", si.RootHash, reportFile, strings.Join(pkgs, ", "))
		return nil
	}
	return errAttestation
}
