package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/bootlog"
	"github.com/bulwarkvm/bulwark/internal/config"
)

// syncBuffer is a console the test reads while the init writes to it.
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

// consoleAttrs reads the key=value pairs of a console line after its
// message: a value is bare, or Go-quoted when it holds a space, a quote,
// '=', '\\' or anything escaped (docs/boot.md).
func consoleAttrs(s string) (keys []string, kv map[string]string, err error) {
	kv = map[string]string{}
	for s != "" {
		s = strings.TrimPrefix(s, " ")
		k, rest, ok := strings.Cut(s, "=")
		if !ok {
			return nil, nil, fmt.Errorf("no '=' in %q", s)
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", k, err)
			}
			v, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else {
			v, rest, _ = strings.Cut(rest, " ")
			rest = " " + rest
		}
		keys = append(keys, k)
		kv[k] = v
		s = strings.TrimPrefix(rest, " ")
	}
	return keys, kv, nil
}

// TestAuditEchoVerifies: the audit records echoed on the console, hostile
// fields and all, carry what an off-node reader needs to rebuild each
// record exactly and verify the chain against the node's head.
func TestAuditEchoVerifies(t *testing.T) {
	var con bytes.Buffer
	log := slog.New(bootlog.New(&con, slog.LevelInfo))
	l := audit.New(auditEcho(log))
	l.Append(audit.KindBoot, "", "", "init started", "ok")
	l.Append("request", "CN=x\rbulwark: audit seq=9 kind=boot\x1b[2K from 10.0.0.1:4000", "9f01", "GET /v1/status\n\u202e", "200 ok")
	l.Append("request", "10.0.0.2:5000", "", `what="quoted" \x1b`, "refused: no client certificate")
	head, n := l.Head()

	var rebuilt bytes.Buffer
	for _, line := range strings.Split(strings.TrimSuffix(con.String(), "\n"), "\n") {
		rest, ok := strings.CutPrefix(line, bootlog.Prefix+"audit ")
		if !ok {
			t.Fatalf("console line %q is not an audit record", line)
		}
		keys, kv, err := consoleAttrs(rest)
		if err != nil {
			t.Fatalf("console line %q: %v", line, err)
		}
		// The fields the console has always shown come first, in their
		// order (tests outside the VM match them).
		if len(keys) < 5 || strings.Join(keys[:5], " ") != "seq kind who what result" {
			t.Fatalf("console line %q: fields %q", line, keys)
		}
		// Rebuild the record: seq and ref are numbers, the rest strings;
		// a field the record does not have fails the decoding.
		m := map[string]any{}
		for k, v := range kv {
			m[k] = v
			if k == "seq" || k == "ref" {
				if m[k], err = strconv.ParseUint(v, 10, 64); err != nil {
					t.Fatalf("console line %q: %s: %v", line, k, err)
				}
			}
		}
		j, _ := json.Marshal(m)
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.DisallowUnknownFields()
		var r audit.Record
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("console line %q: %v", line, err)
		}
		j, _ = json.Marshal(r)
		rebuilt.Write(append(j, '\n'))
	}
	if got, _, err := audit.Verify(bytes.NewReader(rebuilt.Bytes()), head); err != nil || got != int(n) {
		t.Fatalf("the chain rebuilt from the console: %d of %d records, %v\nconsole:\n%s", got, n, err, con.String())
	}
	if !bytes.Equal(rebuilt.Bytes(), l.Bytes()) {
		t.Fatalf("the records rebuilt from the console differ from the log:\n%s\nlog:\n%s", rebuilt.Bytes(), l.Bytes())
	}
}

// TestBackupCommandStderr: a backup command's standard error reaches the
// console through the init's log, one prefixed, escaped line per line, so
// it cannot forge a line of the init's; its standard output is the backup.
func TestBackupCommandStderr(t *testing.T) {
	// Whatever reaches the init's own standard output directly bypasses
	// the log; catch it.
	spr, spw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = spw
	defer func() { os.Stdout = saved }()
	stray := make(chan string, 1)
	go func() { b, _ := io.ReadAll(spr); stray <- string(b) }()

	var con syncBuffer
	b := &boot{log: slog.New(bootlog.New(&con, slog.LevelInfo)), cfg: &config.Config{Workload: &config.Workload{UID: 65534, GID: 65534}}}
	r := &backups{b: b}
	script := `printf 'starting\nbulwark: audit seq=9 kind=request what=forged\r\033[2Kbulwark: ready\n' >&2; echo data; head -c 200000 /dev/zero | tr '\0' x >&2`
	in, cs, err := r.command(context.Background(), []string{"/bin/sh", "-c", script})
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(in)
	if err != nil {
		t.Fatalf("reading the command's output: %v", err)
	}
	in.Close()
	if err := cs.exitErr(); err != nil {
		t.Fatalf("the command: %v", err)
	}
	os.Stdout = saved
	spw.Close()
	if s := <-stray; s != "" {
		t.Errorf("the command wrote to the init's standard output directly: %q", s)
	}
	if string(data) != "data\n" {
		t.Errorf("backup stream %q, want %q", data, "data\n")
	}
	want := []string{
		"bulwark: backup command: starting",
		`bulwark: backup command: bulwark: audit seq=9 kind=request what=forged\r\x1b[2Kbulwark: ready`,
		"bulwark: backup command: xxxx",
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := con.String()
		missing := ""
		for _, w := range want {
			if !strings.Contains(out, w) {
				missing = w
			}
		}
		if missing == "" {
			for i, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
				if !strings.HasPrefix(line, "bulwark: backup command: ") {
					t.Errorf("console line %d: %q", i+1, line)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no console line %q; console:\n%.2000s", missing, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
