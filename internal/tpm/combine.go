package tpm

import (
	"crypto/hkdf"
	"crypto/sha512"
	"fmt"
)

// combinerSalt names the construction, so that its output never collides
// with another use of the same inputs.
const combinerSalt = "bulwark entropy combiner v1"

// Combine fills out with HKDF-SHA512 over the kernel's random bytes and
// the TPM's, in that order, with label as the HKDF info. The output is
// unpredictable if either input is: the TPM's bytes are mixed in and never
// replace the kernel's, so a weak or hostile TPM cannot make keys weaker
// than the kernel alone would. Both inputs should be at least 32 bytes.
func Combine(kernel, tpmBytes []byte, label string, out []byte) error {
	if len(kernel) < 32 || len(tpmBytes) < 32 {
		return fmt.Errorf("tpm: combiner inputs of %d and %d bytes; at least 32 each", len(kernel), len(tpmBytes))
	}
	ikm := make([]byte, 0, len(kernel)+len(tpmBytes))
	ikm = append(ikm, kernel...)
	ikm = append(ikm, tpmBytes...)
	defer clear(ikm)
	k, err := hkdf.Key(sha512.New, ikm, []byte(combinerSalt), label, len(out))
	if err != nil {
		return err
	}
	copy(out, k)
	clear(k)
	return nil
}
