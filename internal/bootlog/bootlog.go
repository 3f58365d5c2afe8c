// Package bootlog is the init's log/slog handler. Every record goes to the
// console, where the tests and the operator read it, as
// "bulwark: [LEVEL: ]message key=value ...", and to the kernel log
// (/dev/kmsg) with its syslog priority, so that it survives in dmesg.
//
// The console format is a contract: "bulwark: ready", "bulwark: FATAL: ..."
// and "bulwark: powered off cleanly" are read by tests outside the VM, and
// the audit records echoed there are the off-node copy of the audit log.
// Messages and values often hold text the node does not control (the
// workload's output, a peer's certificate subject, a request path), so the
// handler escapes, in everything it prints, whatever could end a line, move
// the cursor or change how text is shown: no text can make the console
// show a line of its own that starts "bulwark: ".
package bootlog

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// Prefix starts every console line.
const Prefix = "bulwark: "

// LevelFatal is above slog.LevelError: a failure that halts the node.
const LevelFatal = slog.Level(12)

// Handler writes records to the console and the kernel log.
type Handler struct {
	mu      *sync.Mutex
	console io.Writer
	kmsg    *io.Writer // set once /dev/kmsg is available
	// kmsgFloor is the most urgent severity the kmsg copy is written
	// at: the console's log level, so that the kernel never prints the
	// copy on the console too (where it would appear twice, and cut
	// into the init's own line). The severity stays in the text.
	kmsgFloor *int
	level     slog.Leveler
	attrs     []slog.Attr
	group     string
}

// New returns a handler writing to console; SetKmsg adds the kernel log.
func New(console io.Writer, level slog.Leveler) *Handler {
	var k io.Writer
	floor := 0
	return &Handler{mu: new(sync.Mutex), console: console, kmsg: &k, kmsgFloor: &floor, level: level}
}

// SetKmsg starts copying records to the kernel log. consoleLevel is the
// kernel's console log level (the first field of
// /proc/sys/kernel/printk): the kernel prints a record on the console
// when its severity number is below it, so every copy is written at
// that severity or a lesser one.
func (h *Handler) SetKmsg(w io.Writer, consoleLevel int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.kmsg = w
	*h.kmsgFloor = min(max(consoleLevel, 0), 7)
}

// Enabled implements slog.Handler.
func (h *Handler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return &c
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	c := *h
	if c.group != "" {
		name = c.group + "." + name
	}
	c.group = name
	return &c
}

// Handle implements slog.Handler.
func (h *Handler) Handle(_ context.Context, r slog.Record) error {
	var line bytes.Buffer
	switch {
	case r.Level >= LevelFatal:
		line.WriteString("FATAL: ")
	case r.Level >= slog.LevelError:
		line.WriteString("ERROR: ")
	case r.Level >= slog.LevelWarn:
		line.WriteString("WARN: ")
	}
	line.WriteString(escape(r.Message))
	write := func(a slog.Attr) bool {
		a.Value = a.Value.Resolve()
		if a.Equal(slog.Attr{}) {
			return true
		}
		key := a.Key
		if h.group != "" {
			key = h.group + "." + key
		}
		fmt.Fprintf(&line, " %s=%s", escape(key), value(a.Value.String()))
		return true
	}
	for _, a := range h.attrs {
		write(a)
	}
	r.Attrs(write)

	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := fmt.Fprintf(h.console, "%s%s\n", Prefix, line.Bytes())
	if k := *h.kmsg; k != nil {
		// One write is one kernel log record; its priority is the prefix.
		fmt.Fprintf(k, "<%d>%s%s\n", priority(r.Level, *h.kmsgFloor), Prefix, line.Bytes())
	}
	return err
}

// priority maps slog levels to syslog severities (facility user), none
// more urgent than floor.
func priority(l slog.Level, floor int) int {
	const user = 1 << 3
	sev := 7
	switch {
	case l >= LevelFatal:
		sev = 2 // crit
	case l >= slog.LevelError:
		sev = 3
	case l >= slog.LevelWarn:
		sev = 4
	case l >= slog.LevelInfo:
		sev = 6
	}
	return user | max(sev, floor)
}

// escape returns s with every rune that is neither printable nor the
// ASCII space written as a Go escape ("\x1b", "\r", "\u2028", "\u202e"),
// every byte that is not UTF-8 as "\xNN", and '\' doubled, so that the
// console text maps back to exactly one original. What this catches is
// everything strconv.IsPrint refuses: C0 controls (newline, carriage
// return, backspace, ESC and so every ANSI sequence, tab), DEL, C1
// controls (NEL, 8-bit CSI), the Unicode line and paragraph separators,
// bidi embeddings, overrides and isolates (U+202A-202E, U+2066-2069) and
// other format characters, spaces other than ' ', and unassigned or
// private-use code points.
func escape(s string) string {
	if clean(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case r == ' ' || strconv.IsPrint(r):
			b.WriteString(s[i : i+size])
		default:
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}

// clean reports whether s needs no escaping.
func clean(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || r == '\\' || r != ' ' && !strconv.IsPrint(r) {
			return false
		}
	}
	return true
}

// value is an attribute value as printed: bare when it is not empty and
// holds nothing but printable runes other than space, '"', '=' and '\\';
// otherwise Go-quoted (strconv.Quote escapes exactly what escape does), so
// that strconv.Unquote gives a reader of the console the value back.
func value(v string) string {
	if v == "" || !clean(v) || strings.ContainsAny(v, " \"=") {
		return strconv.Quote(v)
	}
	return v
}
