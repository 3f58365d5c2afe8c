// Package tpm holds what the node does with a TPM 2.0: randomness mixed
// into its keys, measurements of its security state into one PCR with an
// event log, and quotes over that PCR signed by an attestation key, which
// an auditor outside the VM verifies (docs/attestation.md).
package tpm

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// ErrNoTPM means the node has no TPM device.
var ErrNoTPM = errors.New("no TPM")

// Devices are tried in order: the kernel's resource manager first, which
// lets several users share the TPM, then the raw device.
var Devices = []string{"/dev/tpmrm0", "/dev/tpm0"}

// TPM is an open TPM. Its methods may be called from several goroutines.
type TPM struct {
	mu     sync.Mutex
	t      transport.TPMCloser
	Device string

	log      []Event
	ak       tpm2.TPMHandle
	akName   tpm2.TPM2BName
	akPublic []byte
}

// Open opens the first TPM device present; ErrNoTPM if none is.
func Open() (*TPM, error) {
	for _, d := range Devices {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		t, err := linuxtpm.Open(d)
		if err != nil {
			return nil, fmt.Errorf("tpm: opening %s: %w", d, err)
		}
		return &TPM{t: t, Device: d}, nil
	}
	return nil, ErrNoTPM
}

// New wraps a transport (tests use swtpm over a socket).
func New(t transport.TPMCloser, name string) *TPM { return &TPM{t: t, Device: name} }

// Close closes the device.
func (t *TPM) Close() error { return t.t.Close() }

// Random returns n bytes from TPM2_GetRandom, asking as many times as the
// TPM needs (it returns at most one digest's worth at a time).
func (t *TPM) Random(n int) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]byte, 0, n)
	for len(out) < n {
		want := min(n-len(out), 32)
		rsp, err := tpm2.GetRandom{BytesRequested: uint16(want)}.Execute(t.t)
		if err != nil {
			return nil, fmt.Errorf("tpm: GetRandom: %w", err)
		}
		if len(rsp.RandomBytes.Buffer) == 0 {
			return nil, errors.New("tpm: GetRandom returned no bytes")
		}
		out = append(out, rsp.RandomBytes.Buffer...)
	}
	return out[:n], nil
}
