package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// A code block of a markdown file, with the line before it.
type mdBlock struct {
	file   string
	line   int // of the block's first line
	text   string
	marker string // the reason of a <!-- not run: REASON --> just before it
}

var notRun = regexp.MustCompile(`^<!-- not run: (.+) -->$`)

// blocks returns the fenced and the indented code blocks of a markdown
// file (indented: four spaces after a blank line, outside lists).
func blocks(t *testing.T, file string) []mdBlock {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var out []mdBlock
	before := func(i int) string {
		for j := i - 1; j >= 0; j-- {
			if strings.TrimSpace(lines[j]) != "" {
				return strings.TrimSpace(lines[j])
			}
		}
		return ""
	}
	marker := func(i int) string {
		if m := notRun.FindStringSubmatch(before(i)); m != nil {
			return m[1]
		}
		return ""
	}
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		switch {
		case strings.HasPrefix(l, "```"):
			start := i
			var body []string
			for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
				body = append(body, lines[i])
			}
			out = append(out, mdBlock{file, start + 2, strings.Join(body, "\n"), marker(start)})
		case strings.HasPrefix(l, "    ") && (i == 0 || strings.TrimSpace(lines[i-1]) == "") && !inList(lines, i):
			start := i
			var body []string
			for ; i < len(lines) && (strings.HasPrefix(lines[i], "    ") || strings.TrimSpace(lines[i]) == ""); i++ {
				body = append(body, strings.TrimPrefix(lines[i], "    "))
			}
			i--
			out = append(out, mdBlock{file, start + 1, strings.TrimRight(strings.Join(body, "\n"), "\n"), marker(start)})
		}
	}
	return out
}

// inList says whether an indented line continues a list item (then it is
// not a code block).
func inList(lines []string, i int) bool {
	for j := i - 1; j >= 0; j-- {
		l := lines[j]
		if strings.TrimSpace(l) == "" {
			continue
		}
		if strings.HasPrefix(l, "    ") || strings.HasPrefix(l, "  ") {
			continue
		}
		return strings.HasPrefix(l, "- ") || strings.HasPrefix(l, "* ") || regexp.MustCompile(`^\d+\. `).MatchString(l)
	}
	return false
}

// commandWords start the lines a user runs; a block whose first line
// starts with one is a command block.
var commandWords = regexp.MustCompile(`^(\$ )?(bulwarkctl|go|make|qemu-system-x86_64|cryptsetup|packer|export|source|time|sha256sum|mkdir|bench/\S+|[A-Z][A-Z0-9_]*=\S*)(\s|$)`)

// runnable are the lines a test can run as written: bulwarkctl offline,
// built or run from this tree; anything else must be marked.
var runnable = regexp.MustCompile(`^(bulwarkctl |go run \./cmd/bulwarkctl |go build -o \S+ \./cmd/bulwarkctl( |$)|source <\(bulwarkctl |export PATH=|mkdir )`)

// logicalLines joins continued lines and drops comments and blank lines.
func logicalLines(text string) []string {
	var out []string
	cur := ""
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimPrefix(strings.TrimSpace(l), "$ ")
		if strings.HasSuffix(l, "\\") {
			cur += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		l = cur + l
		cur = ""
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, l)
	}
	return out
}

func isCommandBlock(b mdBlock) bool {
	ls := logicalLines(b.text)
	return len(ls) > 0 && commandWords.MatchString(ls[0])
}

// checkCommandLine checks a bulwarkctl command line against the command
// tree without running it: the words name a command that exists, and
// every flag is one of its flags. Placeholders (..., <x>, $VAR, [..])
// are allowed.
func checkCommandLine(line string) error {
	line = strings.ReplaceAll(line, "go run ./cmd/bulwarkctl ", "bulwarkctl ")
	for _, seg := range regexp.MustCompile(`&&|;|\|`).Split(line, -1) {
		seg = strings.TrimSpace(seg)
		for _, p := range []string{"source <(", "$(", "<("} {
			seg = strings.TrimPrefix(seg, p)
		}
		if rest, ok := strings.CutPrefix(seg, "bulwarkctl "); ok {
			if err := checkArgs(rest); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkArgs(rest string) error {
	for _, stop := range []string{" #", " >", ")"} {
		if j := strings.Index(rest, stop); j >= 0 {
			rest = rest[:j]
		}
	}
	var words []string
	for _, w := range strings.Fields(rest) {
		w = strings.Trim(w, "[]")
		if w != "" && w != "..." {
			words = append(words, w)
		}
	}
	root := newRoot(io.Discard, io.Discard)
	words = compatArgs(root, words)
	c, args, err := root.Find(words)
	if err != nil {
		return err
	}
	if _, err := checkGroup(root, words); err != nil {
		return err
	}
	for _, a := range args {
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			continue
		}
		if strings.HasPrefix(a, "--") {
			n, _, _ := strings.Cut(a[2:], "=")
			if c.Flags().Lookup(n) == nil && c.InheritedFlags().Lookup(n) == nil && n != "help" {
				return fmt.Errorf("%s has no flag --%s", c.CommandPath(), n)
			}
			continue
		}
		if c.Flags().ShorthandLookup(a[1:2]) == nil && a != "-h" {
			return fmt.Errorf("%s has no flag %s", c.CommandPath(), a)
		}
	}
	return nil
}

// docFiles are the markdown files whose commands users copy: the README
// and docs/*.md. docs/cli/ is generated from the command tree; its
// examples are checked by TestExamplesParse.
func docFiles(t *testing.T) []string {
	files, _ := filepath.Glob("../../docs/*.md")
	files = append([]string{"../../README.md"}, files...)
	if len(files) < 10 {
		t.Fatalf("found only %v", files)
	}
	return files
}

// TestDocsCommands runs every command block of the README and docs/*.md
// that is not marked <!-- not run: REASON -->, in order, one temporary
// directory per file (holding links to this tree, so that go run
// ./cmd/bulwarkctl and docs/examples work as written), in a network
// namespace of its own with nothing but a loopback device. A block that
// needs more (a node, QEMU, a cloud) must say so with the marker; every
// bulwarkctl line, marked or not, must name commands and flags that
// exist.
func TestDocsCommands(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatal("unshare (util-linux) is needed to run the documented commands without a network")
	}
	bin := binary(t)
	repo, _ := filepath.Abs("../..")
	var ran, marked int
	for _, file := range docFiles(t) {
		var work string
		for _, b := range blocks(t, file) {
			if !isCommandBlock(b) {
				continue
			}
			where := fmt.Sprintf("%s:%d", strings.TrimPrefix(file, "../../"), b.line)
			for _, l := range logicalLines(b.text) {
				if err := checkCommandLine(l); err != nil {
					t.Errorf("%s: %q: %v", where, l, err)
				}
			}
			if b.marker != "" {
				marked++
				continue
			}
			ok := true
			for _, l := range logicalLines(b.text) {
				if !runnable.MatchString(l) {
					t.Errorf("%s: %q cannot run in a test: make the block runnable offline, or mark it <!-- not run: what it needs, and which test covers it -->", where, l)
					ok = false
				}
			}
			if !ok {
				continue
			}
			if work == "" {
				work = t.TempDir()
				ents, _ := os.ReadDir(repo)
				for _, e := range ents {
					if !strings.HasPrefix(e.Name(), ".") && e.Name() != "out" {
						os.Symlink(filepath.Join(repo, e.Name()), filepath.Join(work, e.Name()))
					}
				}
			}
			cmd := exec.Command("unshare", "--net", "bash", "-euo", "pipefail", "-c", b.text)
			cmd.Dir = work
			cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"), "GOPROXY=off")
			out, err := cmd.CombinedOutput()
			t.Logf("%s:\n%s\n---\n%s", where, b.text, out)
			if err != nil {
				t.Errorf("%s: the block fails: %v\n%s", where, err, out)
			}
			ran++
		}
	}
	t.Logf("%d blocks run, %d marked not run", ran, marked)
	if ran < 4 || marked < 10 {
		t.Errorf("%d blocks run and %d marked: the parser lost blocks", ran, marked)
	}
}

// The examples of every command (the Examples of its help and of its
// page in docs/cli/) name commands and flags that exist.
func TestExamplesParse(t *testing.T) {
	var n int
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, l := range strings.Split(c.Example, "\n") {
			if strings.TrimSpace(l) == "" {
				continue
			}
			n++
			if err := checkCommandLine(strings.TrimSpace(l)); err != nil {
				t.Errorf("%s: example %q: %v", c.CommandPath(), l, err)
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRoot(io.Discard, io.Discard))
	if n < 40 {
		t.Fatalf("only %d examples", n)
	}
	// The checker catches what it is for.
	for _, bad := range []string{"bulwarkctl backup restor --to x", "bulwarkctl status --nod x", "bulwarkctl ca issue node -x"} {
		if checkCommandLine(bad) == nil {
			t.Errorf("%q passes the check", bad)
		}
	}
}
