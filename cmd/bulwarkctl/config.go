package main

import (
	"fmt"
	"io"
	"os"

	"github.com/bulwarkvm/bulwark/internal/config"
)

// configRedact writes the canonical redacted form of a config: what the
// node measures into PCR 15, with each secret replaced by a commitment
// (docs/attestation.md). The output is exactly those bytes, with no
// newline after them, so that sha256sum of the file is the config event's
// digest in a quote.
func configRedact(path string, stdout io.Writer) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := config.RedactDocument(doc)
	clear(doc) // it holds the node's secrets
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	_, err = stdout.Write(out)
	return err
}
