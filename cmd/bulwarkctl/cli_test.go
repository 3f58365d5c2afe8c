package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// commands lists every command an operator can run or ask help for, by
// its words after "bulwarkctl" (the root is the empty list).
func commands(t *testing.T) [][]string {
	t.Helper()
	var out [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		out = append(out, path)
		for _, s := range c.Commands() {
			if s.IsAvailableCommand() || s.Name() == "help" {
				walk(s, append(append([]string{}, path...), s.Name()))
			}
		}
	}
	walk(newRoot(nil, nil), nil)
	if len(out) < 30 {
		t.Fatalf("only %d commands found", len(out))
	}
	return out
}

func lookup(t *testing.T, path []string) *cobra.Command {
	t.Helper()
	c, _, err := newRoot(nil, nil).Find(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func exec2(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// Every command's --help, -h and `help COMMAND` exit 0 and print that
// command's own synopsis, each of its flags, the environment variables it
// reads and, for the commands that do something, examples.
func TestHelpEveryCommand(t *testing.T) {
	for _, path := range commands(t) {
		c := lookup(t, path)
		title := "bulwarkctl " + strings.Join(path, " ")
		forms := [][]string{append(append([]string{}, path...), "--help"), append(append([]string{}, path...), "-h"), append([]string{"help"}, path...)}
		for _, args := range forms {
			code, out, errOut := exec2(args...)
			if code != 0 {
				t.Errorf("%s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
				continue
			}
			if !strings.Contains(out, "Usage:\n  "+c.CommandPath()) {
				t.Errorf("%s: no synopsis of %s:\n%s", strings.Join(args, " "), title, out)
			}
			if c.Parent() != nil && !strings.Contains(out, strings.Fields(c.Long + " " + c.Short)[0]) {
				t.Errorf("%s: not %s's own description:\n%s", strings.Join(args, " "), title, out)
			}
			c.LocalFlags().VisitAll(func(f *pflag.Flag) {
				if !f.Hidden && !strings.Contains(out, "--"+f.Name+" ") {
					t.Errorf("%s: flag --%s not in the help:\n%s", strings.Join(args, " "), f.Name, out)
				}
			})
			if c.Flags().Lookup("node") != nil && c.Flags().Lookup("cert") != nil {
				for _, env := range []string{"BULWARK_NODE", "BULWARK_CERT", "BULWARK_KEY", "BULWARK_CA"} {
					if !strings.Contains(out, "Environment:") || !strings.Contains(out, env) {
						t.Errorf("%s: reads %s, the help does not say so", strings.Join(args, " "), env)
					}
				}
			}
			if c.Flags().Lookup("store") != nil && !strings.Contains(out, "AWS_SECRET_ACCESS_KEY") {
				t.Errorf("%s: reads AWS_SECRET_ACCESS_KEY, the help does not say so", strings.Join(args, " "))
			}
			if c.Runnable() && !strings.Contains(out, "Examples:\n  bulwarkctl ") && !strings.HasPrefix(c.CommandPath(), "bulwarkctl completion") {
				t.Errorf("%s: no examples:\n%s", strings.Join(args, " "), out)
			}
		}
	}
	// Defaults are shown.
	if _, out, _ := exec2("ca", "init", "--help"); !strings.Contains(out, `(default "ecdsa-p256")`) {
		t.Errorf("ca init --help does not show --key-type's default:\n%s", out)
	}
	if _, out, _ := exec2("help"); !strings.Contains(out, "Exit codes:") || !strings.Contains(out, "2  bad usage") {
		t.Errorf("the root help does not document the exit codes:\n%s", out)
	}
}

// A mistyped command, subcommand, help topic or flag is bad usage (exit
// 2) with a suggestion; a group without its subcommand is bad usage too,
// not a help page.
func TestMistyped(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"stauts"}, `did you mean "status"?`},
		{[]string{"backup", "restor", "--store", "x"}, `unknown command "restor" for "backup"; did you mean "restore"?`},
		{[]string{"ca", "isue", "node"}, `did you mean "issue"?`},
		{[]string{"attest", "verfy", "f.json"}, `did you mean "verify"?`},
		{[]string{"help", "backup", "restor"}, `did you mean "restore"?`},
		{[]string{"status", "--nod", "x:1"}, "unknown flag: --nod; did you mean --node?"},
		{[]string{"backup", "list", "--stor", "x"}, "did you mean --store?"},
		{[]string{"completion", "tcsh"}, `unknown command "tcsh"`},
		{[]string{"backup"}, "backup: use decrypt-legacy, keygen, list, restore, start or verify"},
		{[]string{}, "no command"},
		{[]string{"ca", "issue", "node", "--dir", "x", "--validity", "soon"}, `invalid argument "soon" for "--validity"`},
		{[]string{"config", "check"}, "config check: give one config FILE"},
	} {
		code, out, errOut := exec2(c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) || out != "" {
			t.Errorf("bulwarkctl %s: exit %d, want 2 and %q on stderr\nstdout: %s\nstderr: %s", strings.Join(c.args, " "), code, c.want, out, errOut)
		}
		if code == 2 && !strings.Contains(errOut, "--help' for its flags and examples") {
			t.Errorf("bulwarkctl %s: the usage error does not point to --help:\n%s", strings.Join(c.args, " "), errOut)
		}
	}
}

// A node command without a node says which flags or environment
// variables to give.
func TestMissingNodeNamesEnv(t *testing.T) {
	for _, k := range []string{"BULWARK_NODE", "BULWARK_CERT", "BULWARK_KEY", "BULWARK_CA"} {
		t.Setenv(k, "")
	}
	code, _, errOut := exec2("status")
	if code != 2 || !strings.Contains(errOut, "--node HOST:PORT (or set BULWARK_NODE)") || !strings.Contains(errOut, "BULWARK_CA") {
		t.Fatalf("status without a node: exit %d\n%s", code, errOut)
	}
	t.Setenv("BULWARK_NODE", "127.0.0.1:1")
	t.Setenv("BULWARK_CERT", "c.pem")
	code, _, errOut = exec2("status", "--key", "k.pem")
	if code != 2 || strings.Contains(errOut, "BULWARK_NODE") || !strings.Contains(errOut, "missing --ca FILE (or set BULWARK_CA)") {
		t.Fatalf("status with only --ca missing: exit %d\n%s", code, errOut)
	}
}

// The generated reference in docs/cli/ is the one the command tree makes
// now (make check regenerates it and fails on a difference too).
func TestDocsCurrent(t *testing.T) {
	pages, err := docPages(newRoot(nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	dir := "../../docs/cli"
	have, _ := filepath.Glob(filepath.Join(dir, "*.md"))
	var stale []string
	for _, f := range have {
		b, err := os.ReadFile(f)
		want, ok := pages[filepath.Base(f)]
		if err != nil || !ok || !bytes.Equal(b, want) {
			stale = append(stale, filepath.Base(f))
		}
		delete(pages, filepath.Base(f))
	}
	for n := range pages {
		stale = append(stale, n+" (missing)")
	}
	sort.Strings(stale)
	if len(stale) > 0 {
		t.Fatalf("docs/cli/ is stale: %v; run go run ./cmd/bulwarkctl gen-docs docs/cli", stale)
	}
	for _, f := range have {
		b, _ := os.ReadFile(f)
		if bytes.Contains(b, []byte("Auto generated")) {
			t.Errorf("%s carries a generation date", f)
		}
	}
	if len(have) < 30 {
		t.Fatalf("only %d pages in docs/cli", len(have))
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// binary builds bulwarkctl once for the tests that run it as a program.
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bulwarkctl-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "bulwarkctl")
		cmd := exec.Command("go", "build", "-o", binPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = err
			binPath = string(out)
		}
	})
	if binErr != nil {
		t.Fatalf("building bulwarkctl: %v\n%s", binErr, binPath)
	}
	return binPath
}

// The completion scripts load: bash registers the completion, and it
// completes the command names.
func TestCompletion(t *testing.T) {
	bin := binary(t)
	cmd := exec.Command("bash", "-c", "source <(bulwarkctl completion bash) && complete -p bulwarkctl")
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "complete -o default -F __start_bulwarkctl bulwarkctl") {
		t.Fatalf("bash completion: %v\n%s", err, out)
	}
	// What the script asks the program for when the user types
	// "bulwarkctl back<TAB>" and "bulwarkctl backup restore --st<TAB>".
	for args, want := range map[string]string{"back": "backup", "backup restore --st": "--store"} {
		code, out, errOut := exec2(append([]string{"__complete"}, strings.Fields(args)...)...)
		if strings.HasSuffix(args, " ") {
			code, out, errOut = exec2(append(append([]string{"__complete"}, strings.Fields(args)...), "")...)
		}
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("completing %q: exit %d, want %q\n%s%s", args, code, want, out, errOut)
		}
	}
	for _, sh := range []string{"zsh", "fish"} {
		code, out, _ := exec2("completion", sh)
		if code != 0 || !strings.Contains(out, "bulwarkctl") || len(out) < 500 {
			t.Errorf("completion %s: exit %d, %d bytes", sh, code, len(out))
		}
		if p, err := exec.LookPath(sh); err == nil {
			f := filepath.Join(t.TempDir(), "c")
			os.WriteFile(f, []byte(out), 0o644)
			flag := "-n"
			if sh == "fish" {
				flag = "--no-execute"
			}
			if b, err := exec.Command(p, flag, f).CombinedOutput(); err != nil {
				t.Errorf("%s does not parse the script: %v\n%s", sh, err, b)
			}
		}
	}
}

// --json gives JSON on the offline commands that print data; the text
// output stays the default.
func TestJSONOutput(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	jsonOf := func(args ...string) map[string]any {
		t.Helper()
		code, out, errOut := exec2(args...)
		var v map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
			t.Fatalf("bulwarkctl %s: exit %d, not one JSON object:\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
		return v
	}
	if v := jsonOf("ca", "init", "--dir", ca, "--project", "acme", "--json"); v["certificate"].(map[string]any)["subject"] == "" {
		t.Fatal(v)
	}
	v := jsonOf("ca", "issue", "node", "--dir", ca, "--name", "n1", "--ip", "127.0.0.1", "--out", filepath.Join(dir, "n1"), "--json")
	if ips := v["certificate"].(map[string]any)["ip_addresses"].([]any); ips[0] != "127.0.0.1" {
		t.Fatal(v)
	}
	jsonOf("ca", "issue", "client", "--dir", ca, "--name", "r", "--role", "operator", "--out", filepath.Join(dir, "r"), "--json")
	if v := jsonOf("ca", "show", "--dir", ca, "--json"); !strings.HasPrefix(v["pem"].(string), "-----BEGIN CERTIFICATE-----") {
		t.Fatal(v)
	}
	if v := jsonOf("ca", "verify", "--dir", ca, filepath.Join(dir, "n1.pem"), "--json"); v["valid"] != true {
		t.Fatal(v)
	}
	if v := jsonOf("config", "check", "--json", "../../docs/examples/node-static.json"); v["hostname"] != "db-node-1" || v["valid"] != true {
		t.Fatal(v)
	}
	if v := jsonOf("backup", "keygen", "--out", filepath.Join(dir, "svc"), "--json"); len(v["key_id"].(string)) != 64 {
		t.Fatal(v)
	}
	// Text by default.
	if _, out, _ := exec2("config", "check", "../../docs/examples/node-static.json"); !strings.HasPrefix(out, "../../docs/examples/node-static.json: valid (version 1") {
		t.Fatal(out)
	}
}

// Flags spelt with one dash, as Go's flag package took them before
// cobra, still work.
func TestSingleDashFlags(t *testing.T) {
	code, out, errOut := exec2("config", "check", "-json", "../../docs/examples/node-static.json")
	if code != 0 || !strings.Contains(out, `"valid": true`) {
		t.Fatalf("config check -json: exit %d\n%s%s", code, out, errOut)
	}
	dir := t.TempDir()
	if code, out, errOut := exec2("ca", "init", "-dir", filepath.Join(dir, "ca"), "-project=acme"); code != 0 {
		t.Fatalf("ca init -dir -project=: exit %d\n%s%s", code, out, errOut)
	}
}
