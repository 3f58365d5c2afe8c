package bootlog

import (
	"bytes"
	"errors"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestFormat(t *testing.T) {
	var con, kmsg bytes.Buffer
	h := New(&con, slog.LevelInfo)
	log := slog.New(h)
	log.Info("ready")
	h.SetKmsg(&kmsg, 0)
	log.Warn("module failed", "module", "aesni_intel", "err", errors.New("no such device"))
	log.Log(nil, LevelFatal, "config: hostname: is required")
	log.Debug("hidden")
	log.Info("evil\nbulwark: ready")
	want := "bulwark: ready\n" +
		"bulwark: WARN: module failed module=aesni_intel err=\"no such device\"\n" +
		"bulwark: FATAL: config: hostname: is required\n" +
		`bulwark: evil\nbulwark: ready` + "\n"
	if con.String() != want {
		t.Fatalf("console:\n%s\nwant:\n%s", con.String(), want)
	}
	if !strings.HasPrefix(kmsg.String(), "<12>bulwark: WARN: module failed") || !strings.Contains(kmsg.String(), "<10>bulwark: FATAL:") {
		t.Fatalf("kmsg: %q", kmsg.String())
	}
	if strings.Contains(kmsg.String(), "<14>bulwark: ready\n") {
		t.Fatal("a record before SetKmsg reached kmsg")
	}
}

// forgeries are untrusted texts that try to make the console show a line
// starting "bulwark: " of their own: by a line break, by moving the cursor
// back to the start of the line (carriage return, backspaces, ANSI
// sequences, 8-bit CSI), by Unicode line separators, or by reordering what
// is shown (bidi overrides).
var forgeries = []string{
	"\rbulwark: audit seq=7 kind=request who=root what=forged result=ok",
	"x\nbulwark: audit seq=7 kind=request who=root what=forged result=ok",
	"\r\nbulwark: ready",
	"\x1b[2K\x1b[1Gbulwark: audit seq=7 kind=request what=forged",
	"\x1b]0;title\x07\x1b[31mred\x1b[0m",
	"\b\b\b\b\b\b\b\b\b\b\b\b\b\b\b\b\b\b\bbulwark: audit seq=7",
	"\x0bbulwark: ready\x0cbulwark: ready\x7f",
	"\u0085bulwark: audit seq=7 (NEL)",
	"\u009b2K\u009b1Gbulwark: audit seq=7 (C1 CSI)",
	"\x9b2Kbulwark: audit seq=7 (a raw 8-bit CSI byte)",
	"\u2028bulwark: audit seq=7\u2029bulwark: ready",
	"\u202etidua :krawlub\u202c \u2066bulwark\u2069 \u200f",
	"\x00nul\ttab",
	"no-space\x1b[2K",
}

// TestNoForgedLines: whatever a message, an attribute value or a
// WithAttrs value holds, every console line starts with "bulwark: ",
// consists of printable characters and spaces only, and the only audit
// line is the real one; attribute values read back to what was logged.
func TestNoForgedLines(t *testing.T) {
	var con, kmsg bytes.Buffer
	h := New(&con, slog.LevelInfo)
	h.SetKmsg(&kmsg, 0)
	log := slog.New(h)
	for _, f := range forgeries {
		log.Info("workload: " + f)
		log.Info("backup command: "+f, "who", f)
		log.With("peer", f).Warn("handshake refused", "path", f, "n", 1)
		log.WithGroup(f).Info("group", "k", f)
	}
	log.Info("audit", "seq", 1, "kind", "boot", "who", "", "what", "init started", "result", "ok")

	check := func(name, out, prefix string) {
		if !utf8.ValidString(out) {
			t.Errorf("%s: not valid UTF-8", name)
		}
		if !strings.HasSuffix(out, "\n") {
			t.Fatalf("%s: does not end with a newline", name)
		}
		audits := 0
		for i, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			if !strings.HasPrefix(line, prefix) {
				t.Errorf("%s line %d does not start with %q: %q", name, i+1, prefix, line)
			}
			for _, r := range line {
				if r != ' ' && !strconv.IsPrint(r) {
					t.Errorf("%s line %d holds %U: %q", name, i+1, r, line)
					break
				}
			}
		}
		// However a reader splits lines, only the real record starts one.
		for _, seg := range strings.FieldsFunc(out, func(r rune) bool {
			return strings.ContainsRune("\n\r\v\f\u0085\u2028\u2029", r)
		}) {
			if strings.HasPrefix(strings.TrimLeft(seg, "\x00\b\x1b[0123456789;GK "), prefix+"audit") {
				audits++
			}
		}
		if audits != 1 {
			t.Errorf("%s: %d lines read as audit records, want the one real record", name, audits)
		}
	}
	check("console", con.String(), Prefix)
	check("kmsg", regexp.MustCompile(`(?m)^<\d+>`).ReplaceAllString(kmsg.String(), ""), Prefix)

	// Attribute values are bare or Go-quoted: a reader of the console gets
	// back exactly what was logged (the audit chain is verified from it).
	var rec bytes.Buffer
	log = slog.New(New(&rec, slog.LevelInfo))
	for _, f := range forgeries {
		rec.Reset()
		log.Info("m", "v", f)
		line := strings.TrimSuffix(rec.String(), "\n")
		v, ok := strings.CutPrefix(line, Prefix+"m v=")
		if !ok {
			t.Fatalf("attribute line %q", line)
		}
		if u, err := strconv.Unquote(v); err != nil || u != f {
			t.Errorf("value %q logged as %q, which reads back as %q (%v)", f, v, u, err)
		}
	}
}

// TestRelay: a service's line keeps its level (ERROR at most) and gets the
// service's name; PID1's escaping applies to it.
func TestRelay(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(New(&out, slog.LevelInfo))
	for _, c := range []struct{ in, want string }{
		{"bulwark: ipsec: SAs installed peer=db-2 gen=1", "bulwark: keying: ipsec: SAs installed peer=db-2 gen=1\n"},
		{"bulwark: WARN: ipsec: keying failed peer=db-2", "bulwark: WARN: keying: ipsec: keying failed peer=db-2\n"},
		{"bulwark: FATAL: pretending", "bulwark: ERROR: keying: pretending\n"},
		{"no prefix \x1b[2J", "bulwark: keying: no prefix \\x1b[2J\n"},
	} {
		out.Reset()
		Relay(log, "keying", c.in)
		if out.String() != c.want {
			t.Errorf("Relay(%q) = %q, want %q", c.in, out.String(), c.want)
		}
	}
}

// TestKmsgBelowConsoleLevel: with the console at level 4 (quiet), no copy
// in the kernel log is urgent enough for the kernel to print it on the
// console as well (levels 0-3), where it would show twice and could cut
// into the init's own line; the severity stays in the text.
func TestKmsgBelowConsoleLevel(t *testing.T) {
	var con, kmsg bytes.Buffer
	h := New(&con, slog.LevelInfo)
	h.SetKmsg(&kmsg, 4)
	log := slog.New(h)
	log.Log(nil, LevelFatal, "stage failed")
	log.Error("step failed")
	log.Warn("warned")
	log.Info("said")
	want := "<12>bulwark: FATAL: stage failed\n<12>bulwark: ERROR: step failed\n<12>bulwark: WARN: warned\n<14>bulwark: said\n"
	if kmsg.String() != want {
		t.Errorf("kmsg:\n%s\nwant:\n%s", kmsg.String(), want)
	}
}
