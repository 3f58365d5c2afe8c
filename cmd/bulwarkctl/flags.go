package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// normalizeFlag keeps the old spelling --o of -o (the flag package took
// both) working for --output.
func normalizeFlag(_ *pflag.FlagSet, n string) pflag.NormalizedName {
	if n == "o" {
		return "output"
	}
	return pflag.NormalizedName(n)
}

// compatArgs rewrites -name to --name where name is a long flag of the
// command being run: bulwarkctl parsed its flags with Go's flag package
// before, which takes either, and scripts and docs say `image build -out
// out`. pflag would read -out as the shorthands o, u, t.
func compatArgs(root *cobra.Command, args []string) []string {
	cmd, _, err := root.Find(args)
	if err != nil || cmd == nil {
		return args
	}
	out := slices.Clone(args)
	for i, a := range out {
		if a == "--" {
			break
		}
		if len(a) < 3 || a[0] != '-' || a[1] == '-' {
			continue
		}
		n, _, _ := strings.Cut(a[1:], "=")
		if cmd.Flags().Lookup(n) != nil || cmd.InheritedFlags().Lookup(n) != nil {
			out[i] = "-" + a
		}
	}
	return out
}

// noArgs refuses positional arguments; on a command that has subcommands
// (attest) an argument is a mistyped subcommand.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if c.HasSubCommands() {
		return unknownCommand(c, args[0])
	}
	return usagef("%s: takes no arguments, got %q", name(c), args[0])
}

// exactArgs wants n arguments and says what they are otherwise.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s: %s", name(c), what)
		}
		return nil
	}
}

type envVar struct{ name, desc string }

var (
	nodeEnv = []envVar{
		{"BULWARK_NODE", "the node's management API, HOST:PORT (--node)"},
		{"BULWARK_CERT", "your client certificate, PEM (--cert)"},
		{"BULWARK_KEY", "its private key, PEM (--key)"},
		{"BULWARK_CA", "the project CA certificate the node's must chain to, PEM (--ca)"},
	}
	s3Env = []envVar{
		{"AWS_ACCESS_KEY_ID", "the S3 access key, for s3:// stores (never a flag: other users see flags)"},
		{"AWS_SECRET_ACCESS_KEY", "the S3 secret key, for s3:// stores"},
		{"AWS_SESSION_TOKEN", "the session token of temporary S3 credentials (STS), for s3:// stores"},
	}
)

// withEnv appends the environment variables a command reads to its long
// description, so that its --help and its page in docs/cli/ list them.
func withEnv(long string, vars ...envVar) string {
	var b strings.Builder
	b.WriteString(long)
	// Indented by four after a blank line: preformatted in the markdown
	// pages too.
	b.WriteString("\n\nEnvironment:\n\n")
	w := 0
	for _, v := range vars {
		w = max(w, len(v.name))
	}
	for _, v := range vars {
		fmt.Fprintf(&b, "    %-*s  %s\n", w, v.name, v.desc)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// printJSON writes v as indented JSON with a newline.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
