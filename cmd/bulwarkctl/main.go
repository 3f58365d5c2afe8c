// Command bulwarkctl is the operator's CLI: the project CA, the node
// config check, the image build, and the management API of a running node
// (status, client allowlist, audit log, shutdown). Output is for people by
// default and JSON with --json. Exit codes: 0 success, 1 the operation
// failed or was refused, 2 bad usage.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/imagebuild"
)

const usage = `usage: bulwarkctl COMMAND

project CA:
  ca init --dir DIR --project NAME [--key-type ecdsa-p256|rsa-3072]
  ca issue node --dir DIR --name NAME [--dns N,..] [--ip A,..] --out PREFIX [--tls-json FILE]
  ca issue client --dir DIR --name NAME --role operator|control-plane --out PREFIX
  ca show --dir DIR [--text]         print the CA certificate (PEM) for clients to trust
  ca verify --dir DIR [--use server|client] [--revoked S,..] CERT

a running node (flags or BULWARK_NODE, BULWARK_CERT, BULWARK_KEY, BULWARK_CA):
  status [--json]
  allowlist get [--json]
  allowlist set CIDR...              replace the client allowlist (atomic)
  audit fetch [-o FILE]              download the node's audit log
  shutdown --wipe                    power the node off; its volumes are crypto-erased
  backup start | ipsec rekey         start a backup / an IPsec rekey
  attest --config FILE [--ak FP] [--save F]   TPM quote over a fresh nonce: signature, nonce, PCR 15
                                     replayed from the event log, config digest against FILE (the full
                                     config or its redacted form: both give the digest the node measured)
  attest verify F [--nonce N] [--config FILE] [--ak FP]   the same for a saved answer
  node flags: --node HOST:PORT --cert FILE --key FILE --ca FILE

backups (offline, with the service's keys; S3 credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY):
  backup keygen --out PREFIX         RSA-3072 pair: PREFIX.key (0600, stays off the nodes), PREFIX.pub
  backup list --store STORE [--json]
  backup verify --store STORE --key K[,K..] --node N --id ID     authenticate everything, write nothing
  backup restore --store STORE --key K[,K..] --node N --id ID --to DIR|-
  backup decrypt-legacy --key K [-o OUT] FILE                   pghoard/rohmu pghoa1 files
  STORE: a directory, or s3://BUCKET[/PREFIX] --endpoint URL --region R [--allow-http]

offline:
  audit verify FILE [--head HASH]    check an audit log's hash chain
    [--start N [--anchor HASH]]      one that begins at record N (the node kept only its latest records)
  config check FILE                  validate a node config exactly as the node will
  config redact FILE                 write to stdout the config with its secrets replaced by commitments:
                                     the bytes the node measures, for auditors (attest --config)
  image build [flags]                build the node image into out/
`

// usageError marks bad usage (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	err := dispatch(args, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "bulwarkctl: %s\n\n%s", ue.msg, usage)
		return 2
	}
	fmt.Fprintln(stderr, "bulwarkctl:", err)
	return 1
}

func dispatch(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"no command"}
	}
	cmd, rest := args[0], args[1:]
	sub := ""
	if len(rest) > 0 {
		sub = rest[0]
	}
	switch cmd {
	case "ca":
		return caCommand(rest, stdout, stderr)
	case "status":
		return statusCommand(rest, stdout)
	case "allowlist":
		return allowlistCommand(rest, stdout, stderr)
	case "audit":
		if sub == "verify" {
			return auditVerify(rest[1:], stdout)
		}
		if sub == "fetch" {
			return auditFetch(rest[1:], stdout, stderr)
		}
		return usageError{"audit: use fetch or verify"}
	case "shutdown":
		return shutdownCommand(rest, stdout)
	case "backup":
		return backupCommand(rest, stdout, stderr)
	case "attest":
		return attestCommand(rest, stdout)
	case "ipsec":
		if sub != "rekey" {
			return usageError{"ipsec: use rekey"}
		}
		return postCommand("/v1/ipsec/rekey", rest[1:], stdout)
	case "image":
		if sub != "build" {
			return usageError{"image: use build"}
		}
		return imagebuild.Main(context.Background(), rest[1:], stdout)
	case "config":
		switch {
		case sub == "check" && len(rest) == 2:
			return configCheck(rest[1], stdout)
		case sub == "redact" && len(rest) == 2:
			return configRedact(rest[1], stdout)
		}
		return usageError{"config: use check FILE or redact FILE"}
	}
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

func configCheck(path string, stdout io.Writer) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	cfg, err := config.Parse(doc)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(stdout, "%s: valid (version %d, hostname %s, %d interfaces, sha256 %s)\n",
		path, cfg.Version, cfg.Hostname, len(cfg.Network.Interfaces), config.Digest(doc))
	return nil
}
