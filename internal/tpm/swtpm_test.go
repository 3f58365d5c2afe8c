package tpm

import (
	"testing"

	"github.com/bulwarkvm/bulwark/internal/tpm/tpmtest"
)

// startSwtpm starts a software TPM (Debian's swtpm) on loopback and
// returns a TPM talking to it: raw TPM 2.0 commands over its data socket.
func startSwtpm(t *testing.T) *TPM {
	t.Helper()
	return New(tpmtest.Swtpm(t), "swtpm")
}
