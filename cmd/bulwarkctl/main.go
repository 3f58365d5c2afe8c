// Command bulwarkctl is the operator's CLI: the project CA, the node
// config check, the image build, backups, and the management API of a
// running node (status, client allowlist, audit log, shutdown,
// attestation). Output is for people by default and JSON with --json.
// Exit codes: 0 success, 1 the operation failed or was refused, 2 bad
// usage. The command tree is built with spf13/cobra; docs/cli/ is
// generated from it (bulwarkctl gen-docs, run by make check).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// usageError marks bad usage (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

const rootLong = `bulwarkctl is the operator's CLI for bulwark nodes: the project CA, the
management API of a running node (status, client allowlist, audit log,
shutdown, IPsec rekey, attestation), the service's backups (keys, list,
verify, restore), config checks and the image build.

Commands that talk to a node take --node, --cert, --key and --ca, or the
environment variables BULWARK_NODE, BULWARK_CERT, BULWARK_KEY and
BULWARK_CA. Commands that print data print text for people by default and
JSON with --json. Long operations show progress on standard error (a bar
on a terminal, a line every few seconds otherwise; --quiet for none).

Exit codes:

    0  done
    1  the operation failed, or the node or a check refused it
    2  bad usage (unknown command or flag, missing argument); nothing was done`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs one command line and returns its exit code. The command tree
// is built anew for every call, so that no flag value outlives a run.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	args = compatArgs(root, args)
	cmd, err := checkGroup(root, args)
	if err == nil {
		root.SetArgs(args)
		cmd, err = root.ExecuteC()
	}
	if err == nil {
		return 0
	}
	if cmd == nil {
		cmd = root
	}
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		fmt.Fprintf(stderr, "bulwarkctl: %s\n", err)
		fmt.Fprintf(stderr, "usage: %s\nRun '%s --help' for its flags and examples.\n", useLine(cmd), cmd.CommandPath())
		return 2
	}
	fmt.Fprintln(stderr, "bulwarkctl:", err)
	return 1
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:               "bulwarkctl",
		Short:             "The operator's CLI for bulwark nodes",
		Long:              rootLong,
		SilenceErrors:     true,
		SilenceUsage:      true,
		DisableAutoGenTag: true,
		Example: `  bulwarkctl ca init --dir ./acme-ca --project acme
  bulwarkctl help backup restore`,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetGlobalNormalizationFunc(normalizeFlag)
	root.SetFlagErrorFunc(flagError)
	root.SetHelpCommand(helpCommand())
	root.AddCommand(caCmd(), statusCmd(), allowlistCmd(), auditCmd(), shutdownCmd(),
		backupCmd(), ipsecCmd(), attestCmd(), configCmd(), imageCmd(), genDocsCmd())
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	return root
}

// useLine is the synopsis for a usage error: a group's names its
// subcommand.
func useLine(c *cobra.Command) string {
	if !c.Runnable() && c.HasSubCommands() {
		return c.CommandPath() + " COMMAND"
	}
	return c.UseLine()
}

// name is a command's path without the program name, for messages.
func name(c *cobra.Command) string {
	return strings.TrimPrefix(strings.TrimPrefix(c.CommandPath(), "bulwarkctl"), " ")
}

// group makes a command that only holds subcommands. Called without one,
// or with one that does not exist, it is bad usage (checkGroup), never a
// silent help page with exit 0.
func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short}
	c.AddCommand(subs...)
	return c
}

// checkGroup answers a command line that stops at a group of commands
// (bulwarkctl backup) or names a subcommand that does not exist
// (bulwarkctl backup restor) with a usage error and suggestions; cobra
// would print the group's help and exit 0. Help requests and the shell
// completion machinery pass through.
func checkGroup(root *cobra.Command, args []string) (*cobra.Command, error) {
	if len(args) > 0 && (args[0] == cobra.ShellCompRequestCmd || args[0] == cobra.ShellCompNoDescRequestCmd) {
		return root, nil
	}
	cmd, rest, err := root.Find(args)
	if cmd == nil {
		return root, nil
	}
	for _, a := range rest {
		if a == "-h" || a == "--help" {
			return cmd, nil
		}
	}
	if err == nil && (cmd.Runnable() || !cmd.HasSubCommands()) {
		return cmd, nil
	}
	var pos []string
	for _, a := range rest {
		if !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
		}
	}
	if len(pos) > 0 {
		return cmd, unknownCommand(cmd, pos[0])
	}
	if cmd == root {
		return cmd, usageError{"no command; run 'bulwarkctl --help' for the list"}
	}
	return cmd, usagef("%s: use %s", name(cmd), orList(subNames(cmd)))
}

func subNames(c *cobra.Command) []string {
	var names []string
	for _, s := range c.Commands() {
		if s.IsAvailableCommand() && s.Name() != "help" {
			names = append(names, s.Name())
		}
	}
	return names
}

func orList(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// unknownCommand is the usage error for a subcommand c does not have,
// with the names that are near it.
func unknownCommand(c *cobra.Command, arg string) error {
	where := ""
	if c.HasParent() {
		where = fmt.Sprintf(" for %q", name(c))
	}
	msg := fmt.Sprintf("unknown command %q%s", arg, where)
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2
	}
	if s := c.SuggestionsFor(arg); len(s) > 0 {
		msg += "; did you mean " + quoteList(s) + "?"
	} else if names := subNames(c); len(names) > 0 {
		msg += "; the commands are " + strings.Join(names, ", ")
	}
	return usageError{msg}
}

func quoteList(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = fmt.Sprintf("%q", v)
	}
	return orList(q)
}

// flagError makes every flag parsing error a usage error that names the
// command, and suggests the flags near an unknown one.
func flagError(c *cobra.Command, err error) error {
	msg := err.Error()
	if n, ok := unknownFlag(msg); ok {
		if s := suggestFlags(c, n); len(s) > 0 {
			msg += "; did you mean " + orList(s) + "?"
		}
	}
	return usagef("%s: %s", name(c), msg)
}

// unknownFlag returns the name pflag could not find: "unknown flag: --nod"
// or "unknown shorthand flag: 'n' in -nod".
func unknownFlag(msg string) (string, bool) {
	if v, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
		return v, true
	}
	if _, v, ok := strings.Cut(msg, "' in -"); ok && strings.HasPrefix(msg, "unknown shorthand flag") {
		n, _, _ := strings.Cut(v, "=")
		return n, true
	}
	return "", false
}

func suggestFlags(c *cobra.Command, typed string) []string {
	typed, _, _ = strings.Cut(typed, "=")
	var out []string
	seen := map[string]bool{}
	visit := func(n string) {
		if seen[n] || n == "help" {
			return
		}
		seen[n] = true
		if levenshtein(strings.ToLower(typed), n) <= 2 || (len(typed) > 1 && strings.HasPrefix(n, typed)) {
			out = append(out, "--"+n)
		}
	}
	c.Flags().VisitAll(func(f *pflag.Flag) { visit(f.Name) })
	c.InheritedFlags().VisitAll(func(f *pflag.Flag) { visit(f.Name) })
	slices.Sort(out)
	return out
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// isCobraUsage recognises the usage errors cobra makes itself, in case
// one gets past the checks above.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "required flag", "invalid argument", "flag needs an argument"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// helpCommand is `bulwarkctl help [COMMAND]...`: the command's own help,
// exit 0; an unknown topic is bad usage with suggestions.
func helpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND]...",
		Short: "Help about any command",
		Long:  "Prints the help of a command: its synopsis, flags with their defaults, the environment variables it reads and examples.",
		Example: `  bulwarkctl help
  bulwarkctl help backup restore`,
		ValidArgsFunction: func(c *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			target := c.Root()
			for _, a := range args {
				if target = findSub(target, a); target == nil {
					return nil, cobra.ShellCompDirectiveNoFileComp
				}
			}
			return subNames(target), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			target := c.Root()
			for _, a := range args {
				next := findSub(target, a)
				if next == nil {
					return unknownCommand(target, a)
				}
				target = next
			}
			return target.Help()
		},
	}
}

func findSub(c *cobra.Command, n string) *cobra.Command {
	for _, s := range c.Commands() {
		if s.Name() == n || s.HasAlias(n) {
			return s
		}
	}
	return nil
}
