// Package bootlog is the init's log/slog handler. Every record goes to the
// console, where the tests and the operator read it, as
// "bulwark: [LEVEL: ]message key=value ...", and to the kernel log
// (/dev/kmsg) with its syslog priority, so that it survives in dmesg.
//
// The console format is a contract: "bulwark: ready", "bulwark: FATAL: ..."
// and "bulwark: powered off cleanly" are read by tests outside the VM.
package bootlog

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
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
	level   slog.Leveler
	attrs   []slog.Attr
	group   string
}

// New returns a handler writing to console; SetKmsg adds the kernel log.
func New(console io.Writer, level slog.Leveler) *Handler {
	var k io.Writer
	return &Handler{mu: new(sync.Mutex), console: console, kmsg: &k, level: level}
}

// SetKmsg starts copying records to the kernel log.
func (h *Handler) SetKmsg(w io.Writer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.kmsg = w
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
	line.WriteString(oneLine(r.Message))
	write := func(a slog.Attr) bool {
		a.Value = a.Value.Resolve()
		if a.Equal(slog.Attr{}) {
			return true
		}
		key := a.Key
		if h.group != "" {
			key = h.group + "." + key
		}
		v := oneLine(a.Value.String())
		if v == "" || strings.ContainsAny(v, " \"=") {
			v = fmt.Sprintf("%q", v)
		}
		fmt.Fprintf(&line, " %s=%s", key, v)
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
		fmt.Fprintf(k, "<%d>%s%s\n", priority(r.Level), Prefix, line.Bytes())
	}
	return err
}

// priority maps slog levels to syslog severities (facility user).
func priority(l slog.Level) int {
	const user = 1 << 3
	switch {
	case l >= LevelFatal:
		return user | 2 // crit
	case l >= slog.LevelError:
		return user | 3
	case l >= slog.LevelWarn:
		return user | 4
	case l >= slog.LevelInfo:
		return user | 6
	}
	return user | 7
}

// oneLine keeps a message on one console line: a newline inside a value
// must not be able to forge a contract line such as "bulwark: ready".
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}
