package main

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/secret"
	"github.com/bulwarkvm/bulwark/internal/tpm"
)

// waitForEntropy returns once the kernel's random number generator is
// initialised, so that every key drawn later comes from a seeded generator
// (getrandom(2) without GRND_NONBLOCK blocks until then). When the node
// has a TPM, its randomness is combined into every key drawn from then on
// (volume keys, keyslot passphrases, backup segment secrets), never in
// place of the kernel's; a node without one says so and goes on.
func waitForEntropy(b *boot) (string, error) {
	buf := make([]byte, 16)
	defer clear(buf)
	state := "kernel RNG ready"
	if _, err := unix.Getrandom(buf, unix.GRND_NONBLOCK); err == unix.EAGAIN {
		b.log.Info("waiting for the kernel RNG to be seeded")
		if _, err := unix.Getrandom(buf, 0); err != nil {
			return "", fmt.Errorf("getrandom: %w", err)
		}
		state = "kernel RNG ready after waiting"
	} else if err != nil {
		return "", fmt.Errorf("getrandom: %w", err)
	}
	t, err := tpm.Open()
	if errors.Is(err, tpm.ErrNoTPM) {
		return state + ", no TPM", nil
	}
	if err != nil {
		return "", err
	}
	// Check that the TPM answers before every key depends on it.
	if _, err := t.Random(32); err != nil {
		return "", err
	}
	b.tpm = t
	secret.SetMixer(func(p []byte) error { return mixTPM(t, p) })
	return fmt.Sprintf("%s, TPM 2.0 at %s mixed into every key", state, t.Device), nil
}

// mixTPM combines TPM randomness into p, which holds the kernel's bytes.
func mixTPM(t *tpm.TPM, p []byte) error {
	kernel := make([]byte, max(32, len(p)))
	defer clear(kernel)
	copy(kernel, p)
	if len(p) < 32 {
		// Too few kernel bytes for the combiner: top them up.
		if err := secret.Fill(kernel[len(p):]); err != nil {
			return err
		}
	}
	tb, err := t.Random(len(kernel))
	if err != nil {
		return err
	}
	defer clear(tb)
	return tpm.Combine(kernel, tb, "bulwark secret.Random", p)
}
