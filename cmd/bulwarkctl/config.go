package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/bulwarkvm/bulwark/internal/config"
)

func configCmd() *cobra.Command {
	var asJSON bool
	check := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a node config exactly as the node will",
		Long: `Parses and validates a node config with the node's own code: an error names
the field and what is wrong (exit 1). Valid: its version, hostname, number
of interfaces and SHA-256.`,
		Example: `  bulwarkctl config check docs/examples/node-static.json
  bulwarkctl config check --json docs/examples/node-volumes.json`,
		Args: exactArgs(1, "give one config FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return configCheck(args[0], asJSON, cmd.OutOrStdout())
		},
	}
	check.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	redact := &cobra.Command{
		Use:   "redact FILE",
		Short: "Write the config with its secrets replaced by commitments (what the node measures)",
		Long: `Writes to standard output the config's canonical redacted form: each secret
(TLS key, S3 secret key) replaced by a commitment. These are the bytes the
node measures into PCR 15, with no newline after them: sha256sum of the
output is the config event's digest in a quote. Give it to auditors for
attest --config instead of the secrets. The output is JSON already.`,
		Example: `  bulwarkctl config redact booted.json > redacted.json`,
		Args:    exactArgs(1, "give one config FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return configRedact(args[0], cmd.OutOrStdout())
		},
	}
	return group("config", "Node configs: check one, or write its redacted form", check, redact)
}

func configCheck(path string, asJSON bool, stdout io.Writer) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	cfg, err := config.Parse(doc)
	if err != nil {
		if asJSON {
			printJSON(stdout, map[string]any{"file": path, "valid": false, "error": err.Error()})
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	if asJSON {
		return printJSON(stdout, map[string]any{"file": path, "valid": true, "version": cfg.Version, "hostname": cfg.Hostname,
			"interfaces": len(cfg.Network.Interfaces), "sha256": config.Digest(doc)})
	}
	fmt.Fprintf(stdout, "%s: valid (version %d, hostname %s, %d interfaces, sha256 %s)\n",
		path, cfg.Version, cfg.Hostname, len(cfg.Network.Interfaces), config.Digest(doc))
	return nil
}

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
