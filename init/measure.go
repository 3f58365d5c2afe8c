package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/bulwarkvm/bulwark/internal/mgmt"
	"github.com/bulwarkvm/bulwark/internal/tpm"
)

// measure extends PCR 15 with what the node's security rests on, before
// any service (the workload included) starts: the config in its redacted
// form, the firewall ruleset as read back from the kernel, each LUKS2
// header as written, and the system image's root hash when there is one;
// then it makes the attestation key that quotes them
// (docs/attestation.md). Without a TPM there is nothing to measure into.
func measure(b *boot) (string, error) {
	if b.tpm == nil {
		return "no TPM: nothing measured, attestation unavailable", nil
	}
	// The log replays from zero; if something before the init extended
	// PCR 15, no auditor's replay will match, and the report says why.
	before, err := b.tpm.PCRValue()
	if err != nil {
		return "", err
	}
	var degraded string
	if !bytes.Equal(before, make([]byte, len(before))) {
		degraded = fmt.Sprintf("PCR %d was %x before the init measured anything: quotes will not replay from the event log", tpm.PCR, before)
		b.log.Warn(degraded)
	}
	// The config goes in as its canonical redacted form, each secret
	// replaced by a commitment, so that an auditor checks the quote
	// without holding the node's TLS key or S3 credentials. It is made
	// from the config as parsed and validated (nothing changes b.cfg
	// after readConfig), which is the same value whoever holds the full
	// document decodes from it.
	redacted, err := b.cfg.Redacted()
	if err != nil {
		return "", err
	}
	events := []tpm.Event{tpm.NewEvent(tpm.EventConfig, b.cfgSource.String(), redacted)}
	b.log.Info("config measured in its redacted form sha256:" + events[0].SHA256)
	rules, err := b.fw.Ruleset()
	if err != nil {
		return "", err
	}
	events = append(events, tpm.NewEvent(tpm.EventFirewall, "inet bulwark", rules))
	for _, v := range b.volumes {
		events = append(events, tpm.Event{Kind: tpm.EventLUKS2, Name: v.Name, SHA256: v.HeaderSHA256})
	}
	// The system image's root hash, before the workload runs anything
	// from it: bulwarkctl attest --image compares it with the build.
	if sysImg == nil {
		return "", errors.New("measure: no system image is mapped")
	}
	events = append(events, tpm.Event{Kind: tpm.EventSystemImage, Name: usrMount, SHA256: hex.EncodeToString(sysImg.root)})
	what := ", system image"
	for _, e := range events {
		if err := b.tpm.Measure(e); err != nil {
			return "", err
		}
	}
	if err := b.tpm.CreateAK(); err != nil {
		return "", err
	}
	fp := tpm.AKFingerprint(b.tpm.AKPublic())
	b.log.Info("attestation key sha256:" + fp)
	detail := fmt.Sprintf("PCR %d: %d events (config, firewall ruleset, %d LUKS2 headers%s); attestation key sha256:%s", tpm.PCR, len(events), len(b.volumes), what, fp[:16])
	if degraded != "" {
		return "", warning{detail + "; " + degraded}
	}
	return detail, nil
}

// Attest answers POST /v1/attest: a quote over PCR 15 for the caller's
// nonce, with the event log and the attestation key's public part.
func (b *boot) Attest(nonce []byte) (any, error) {
	if b.tpm == nil {
		return nil, fmt.Errorf("no TPM on this node: %w", mgmt.ErrNotAvailable)
	}
	return b.tpm.Quote(nonce)
}

// tpmStatus is the status line for the TPM.
func (b *boot) tpmStatus() string {
	if b.tpm == nil {
		return "no TPM"
	}
	return fmt.Sprintf("TPM 2.0 at %s; PCR %d holds %d events; attestation key sha256:%s",
		b.tpm.Device, tpm.PCR, len(b.tpm.Log()), tpm.AKFingerprint(b.tpm.AKPublic()))
}
