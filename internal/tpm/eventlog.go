package tpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// PCR is the one PCR bulwark extends: 15, in the operating system's range
// (8–15), which neither the firmware nor systemd-boot touches on this
// image, so it is zero until the init extends it.
const PCR = 15

// Event kinds.
const (
	EventConfig   = "config"           // the config's canonical redacted form (config.Config.Redacted)
	EventFirewall = "firewall-ruleset" // the ruleset, as read back from the kernel
	EventLUKS2    = "luks2-header"     // one volume's LUKS2 header area, as written
	// EventSystemImage is the system image's dm-verity root hash (the
	// digest is the root hash itself, which commits to every block).
	EventSystemImage = "system-image"
)

// Event is one measurement: what was measured and the SHA-256 of it.
type Event struct {
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	SHA256 string `json:"sha256"` // hex, of the measured bytes
}

// Extended is the value an event extends the PCR with: SHA-256 over a
// label, the kind, the name and the measured digest, so that the log's
// description of each event is bound as well as its digest.
func (e Event) Extended() ([32]byte, error) {
	d, err := hex.DecodeString(e.SHA256)
	if err != nil || len(d) != 32 {
		return [32]byte{}, fmt.Errorf("tpm: event %s %q: digest %q is not 64 hex digits", e.Kind, e.Name, e.SHA256)
	}
	var b bytes.Buffer
	b.WriteString("bulwark-event-v1\x00")
	b.WriteString(e.Kind)
	b.WriteByte(0)
	b.WriteString(e.Name)
	b.WriteByte(0)
	b.Write(d)
	return sha256.Sum256(b.Bytes()), nil
}

// Replay computes the PCR value a log leads to from a reset PCR (zeros):
// each event extends it as the TPM does, PCR = SHA-256(PCR || value).
func Replay(log []Event) ([32]byte, error) {
	var pcr [32]byte
	for i, e := range log {
		v, err := e.Extended()
		if err != nil {
			return pcr, fmt.Errorf("event %d: %w", i, err)
		}
		pcr = sha256.Sum256(append(pcr[:], v[:]...))
	}
	return pcr, nil
}

// NewEvent measures data.
func NewEvent(kind, name string, data []byte) Event {
	sum := sha256.Sum256(data)
	return Event{Kind: kind, Name: name, SHA256: hex.EncodeToString(sum[:])}
}
