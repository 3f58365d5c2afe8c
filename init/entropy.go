package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// waitForEntropy returns once the kernel's random number generator is
// initialised, so that every key drawn later (volume keys, TLS, IPsec) comes
// from a seeded generator. getrandom(2) without GRND_NONBLOCK blocks until
// then; the report says whether the node had to wait, and whether a TPM is
// present (the TPM issue mixes its randomness into every key).
func waitForEntropy(b *boot) (string, error) {
	tpm := "no TPM"
	if _, err := os.Stat("/dev/tpmrm0"); err == nil {
		tpm = "TPM /dev/tpmrm0"
	}
	buf := make([]byte, 16)
	defer clear(buf)
	if _, err := unix.Getrandom(buf, unix.GRND_NONBLOCK); err == nil {
		return "kernel RNG ready, " + tpm, nil
	} else if err != unix.EAGAIN {
		return "", fmt.Errorf("getrandom: %w", err)
	}
	b.log.Info("waiting for the kernel RNG to be seeded")
	if _, err := unix.Getrandom(buf, 0); err != nil {
		return "", fmt.Errorf("getrandom: %w", err)
	}
	return "kernel RNG ready after waiting, " + tpm, nil
}
