package bootlog

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestFormat(t *testing.T) {
	var con, kmsg bytes.Buffer
	h := New(&con, slog.LevelInfo)
	log := slog.New(h)
	log.Info("ready")
	h.SetKmsg(&kmsg)
	log.Warn("module failed", "module", "aesni_intel", "err", errors.New("no such device"))
	log.Log(nil, LevelFatal, "config: hostname: is required")
	log.Debug("hidden")
	log.Info("evil\nbulwark: ready")
	want := "bulwark: ready\n" +
		"bulwark: WARN: module failed module=aesni_intel err=\"no such device\"\n" +
		"bulwark: FATAL: config: hostname: is required\n" +
		"bulwark: evil bulwark: ready\n"
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
