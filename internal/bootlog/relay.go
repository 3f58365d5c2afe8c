package bootlog

import (
	"context"
	"log/slog"
	"strings"
)

// Relay logs a line of a service process's standard error on PID1's log,
// as the service's own: the service writes with a Handler (Prefix, then
// "WARN: " or "ERROR: " for those levels), and the line comes out as
// "bulwark: [LEVEL: ]name: message". The line is untrusted: it goes
// through the handler's escaping like any message, and a service can
// claim at most ERROR, never FATAL, for its lines.
func Relay(log *slog.Logger, name, line string) {
	line = strings.TrimPrefix(line, Prefix)
	level := slog.LevelInfo
	for _, l := range []struct {
		tag   string
		level slog.Level
	}{{"FATAL: ", slog.LevelError}, {"ERROR: ", slog.LevelError}, {"WARN: ", slog.LevelWarn}} {
		if rest, ok := strings.CutPrefix(line, l.tag); ok {
			line, level = rest, l.level
			break
		}
	}
	log.Log(context.Background(), level, name+": "+line)
}
