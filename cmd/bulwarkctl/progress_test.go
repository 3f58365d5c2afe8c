package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/backup"
	"github.com/bulwarkvm/bulwark/internal/objstore"
)

// sinkEnv makes the test binary a slow reader of its standard input (at
// about the MiB/s it gives) instead of running the tests: restores piped
// into it take seconds whatever the machine, so that progress is seen.
const sinkEnv = "BULWARKCTL_TEST_SLOW_SINK"

func TestMain(m *testing.M) {
	if v := os.Getenv(sinkEnv); v != "" {
		rate, _ := strconv.Atoi(v)
		buf := make([]byte, 1<<20)
		for {
			if _, err := io.ReadFull(os.Stdin, buf); err != nil {
				os.Exit(0)
			}
			time.Sleep(time.Second / time.Duration(max(rate, 1)))
		}
	}
	os.Exit(m.Run())
}

// bigBackup writes a backup of size bytes into a directory store and
// returns the restore flags for it.
func bigBackup(t *testing.T, size int) []string {
	t.Helper()
	k, err := backup.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	priv, _ := backup.PrivateKeyPEM(k)
	keyFile := filepath.Join(dir, "svc.key")
	os.WriteFile(keyFile, priv, 0o600)
	storeDir := filepath.Join(dir, "store")
	os.Mkdir(storeDir, 0o700)
	st, err := objstore.NewDir(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := backup.Write(context.Background(), bytes.NewReader(backup.TestPattern(size)), backup.Options{
		Public: &k.PublicKey, Store: st, Node: "db-1", Region: "r1",
		Source: backup.Source{Kind: "command", Name: "pg_basebackup"}, SegmentSize: 32 << 20, Staging: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--store", storeDir, "--key", keyFile, "--node", "db-1", "--id", m.BackupID}
}

func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// slowRestore is a shell command line: the restore to standard output,
// piped into the slow sink (64 MiB/s).
func slowRestore(t *testing.T, bin string, flags []string, extra string) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s backup restore %s --to - %s | %s=64 %s", shellQuote([]string{bin}), shellQuote(flags), extra, sinkEnv, shellQuote([]string{self}))
}

var plainLine = regexp.MustCompile(`^backup restore: \d+\.\d MiB of 192\.0 MiB \(\d+%\), \d+\.\d MiB/s, about \d+s left$`)

// With standard error not a terminal (a file), progress is plain lines,
// one every plainInterval, then a last one; no bar, no control
// characters. --quiet writes none.
func TestProgressPlainLines(t *testing.T) {
	bin := binary(t)
	flags := bigBackup(t, 192<<20)
	log := filepath.Join(t.TempDir(), "progress.log")
	t0 := time.Now()
	out, err := exec.Command("sh", "-c", slowRestore(t, bin, flags, "2>"+log)).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	took := time.Since(t0)
	b, _ := os.ReadFile(log)
	t.Logf("restore took %s; standard error:\n%s", took.Round(100*time.Millisecond), b)
	if bytes.ContainsAny(b, "\r\x1b") {
		t.Fatalf("control characters in the plain progress: %q", b)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	var periodic int
	for _, l := range lines[:len(lines)-2] {
		if !plainLine.MatchString(l) {
			t.Errorf("not a progress line: %q", l)
		}
		periodic++
	}
	if want := int(took/plainInterval) - 1; periodic < max(want, 1) {
		t.Errorf("%d progress lines in %s, want one every %s", periodic, took, plainInterval)
	}
	if final := lines[len(lines)-2]; !regexp.MustCompile(`^backup restore: 192\.0 MiB of 192\.0 MiB \(100%\), \d+\.\d MiB/s, in \d+(\.\d)?s$`).MatchString(final) {
		t.Errorf("last progress line %q", final)
	}
	if report := lines[len(lines)-1]; !strings.Contains(report, "every chunk, segment and the manifest authentic; restored to -") {
		t.Errorf("no report after the progress: %q", report)
	}

	// --quiet: the report only.
	out, err = exec.Command("sh", "-c", slowRestore(t, bin, flags, "--quiet 2>"+log)).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if b, _ := os.ReadFile(log); strings.Count(string(b), "\n") != 1 || !strings.HasPrefix(string(b), "backup ") || strings.Contains(string(b), "MiB/s") {
		t.Errorf("--quiet wrote progress:\n%s", b)
	}
}

// barLine is the bar as progressbar draws it: description, percentage,
// bar, bytes done of total, rate, [elapsed:left].
var barLine = regexp.MustCompile(`backup restore\s+(\d+)% \|[█ ]+\| \((\d+(\.\d+)?)/192 MiB, (\d+(\.\d+)?) MiB/s\) \[(\d+s):(\d+s)\]`)

// On a terminal (tmux) the restore draws a bar with bytes, rate and time
// left, redrawn in place, and ends its line when done.
func TestProgressBarInTmux(t *testing.T) {
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Fatal("tmux is not installed: make deps installs it (apt-get install tmux)")
	}
	bin := binary(t)
	flags := bigBackup(t, 192<<20)
	sock := fmt.Sprintf("bulwarkctl-test-%d", os.Getpid())
	tm := func(args ...string) (string, error) {
		out, err := exec.Command(tmux, append([]string{"-L", sock}, args...)...).CombinedOutput()
		return string(out), err
	}
	defer tm("kill-server")
	script := slowRestore(t, bin, flags, "") + "; echo EXIT=$?; sleep 120"
	if out, err := tm("new-session", "-d", "-s", "restore", "-x", "160", "-y", "20", "sh", "-c", script); err != nil {
		t.Fatalf("tmux: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	var screen string
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		screen, err = tm("capture-pane", "-p", "-t", "restore")
		if err != nil {
			t.Fatalf("capture-pane: %v\n%s", err, screen)
		}
		if os.Getenv("SHOW_FRAMES") != "" {
			t.Logf("frame: %q", strings.TrimSpace(screen))
		}
		for _, m := range barLine.FindAllStringSubmatch(screen, -1) {
			if pct, _ := strconv.Atoi(m[1]); pct > 0 && pct < 100 && m[7] != "0s" {
				seen[m[0]] = true
			}
		}
		if strings.Contains(screen, "EXIT=") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("last screen:\n%s", screen)
	if !strings.Contains(screen, "EXIT=0") {
		t.Fatal("the restore did not finish with exit 0")
	}
	if len(seen) < 2 {
		t.Fatalf("saw %d distinct bars part way with time left, want the bar redrawn as it goes: %v", len(seen), seen)
	}
	for l := range seen {
		t.Logf("bar seen: %s", l)
		break
	}
	// Redrawn in place: one bar line on the final screen, at 100%, its
	// line ended before the report.
	final := regexp.MustCompile(`(?m)^backup restore 100% \|█+\| \(192/192 MiB, \d+(\.\d+)? MiB/s\) \[\d+s\]\s*\nbackup [0-9a-f]{32} of db-1 `)
	if n := strings.Count(screen, "backup restore "); n != 1 || !final.MatchString(screen) {
		t.Errorf("the final screen has %d bar lines, want one at 100%% before the report", n)
	}
}

// The plain lines' arithmetic, without waiting on a real operation.
func TestProgressLineFormat(t *testing.T) {
	old := plainInterval
	plainInterval = 20 * time.Millisecond
	defer func() { plainInterval = old }()
	var b syncBuffer
	p := newProgress(&b, false, "backup verify", 100<<20)
	p.start = time.Now().Add(-10 * time.Second)
	p.set(25 << 20)
	time.Sleep(60 * time.Millisecond)
	p.set(100 << 20)
	p.finish(true)
	got := b.String()
	if !strings.HasPrefix(got, "backup verify: 25.0 MiB of 100.0 MiB (25%), 2.5 MiB/s, about 30s left\n") ||
		!regexp.MustCompile(`\nbackup verify: 100\.0 MiB of 100\.0 MiB \(100%\), (9\.9|10\.0) MiB/s, in 10(\.\d)?s\n$`).MatchString(got) {
		t.Fatalf("plain lines:\n%s", got)
	}
	// An operation of unknown size says what it does.
	b.Reset()
	p = newProgress(&b, false, "backup list", -1)
	p.describe("listing s3://bkp/p")
	time.Sleep(50 * time.Millisecond)
	p.finish(true)
	if got := b.String(); !strings.HasPrefix(got, "backup list: 0s, listing s3://bkp/p\n") || !strings.HasSuffix(got, ", listing s3://bkp/p, finished\n") {
		t.Fatalf("plain lines of an unknown size:\n%s", got)
	}
	// Quiet, and nothing written for an operation shorter than a line.
	b.Reset()
	p = newProgress(&b, true, "backup list", -1)
	time.Sleep(50 * time.Millisecond)
	p.finish(true)
	plainInterval = time.Hour
	p = newProgress(&b, false, "backup list", -1)
	p.finish(true)
	if b.Len() != 0 {
		t.Fatalf("wrote %q", b.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Len() int { return len(s.String()) }

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

// The image build's progress names the step from the files the build
// has written into its output directory since it started.
func TestWatchBuildSteps(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bulwark.img"), nil, 0o644)
	old := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(dir, "bulwark.img"), old, old) // left by an earlier build
	p := newProgress(io.Discard, true, "image build", -1)
	stop := watchBuild(p, dir)
	step := func() string {
		time.Sleep(400 * time.Millisecond)
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.detail
	}
	if s := step(); s != "building the init" {
		t.Errorf("at the start: %q", s)
	}
	os.WriteFile(filepath.Join(dir, "init"), nil, 0o755)
	if s := step(); s != "assembling the initramfs" {
		t.Errorf("after the init: %q", s)
	}
	os.WriteFile(filepath.Join(dir, "initramfs.img"), nil, 0o644)
	if s := step(); s != "writing the UEFI disk" {
		t.Errorf("after the initramfs: %q", s)
	}
	stop()
	p.finish(true)
}
