// Package backup is what PID1 and the backup service say to each other
// over the control socket (docs/control.md): the operations and their
// messages. The service itself, which runs the backup rounds and the
// object-store client, is the program in cmd/bulwark-backup; PID1 links
// only this package, not the S3 client.
package backup

import (
	"github.com/bulwarkvm/bulwark/internal/config"
)

// Config is the answer to OpConfig.
type Config struct {
	Node    string `json:"node"`
	Staging string `json:"staging"`
	// ReadOnly are the data volumes' mount points that hold sources:
	// the process may read below them (a source the workload makes later
	// is covered, and a mount point cannot be swapped for a link).
	ReadOnly []string      `json:"read_only"`
	Backup   config.Backup `json:"backup"`
}

// Operations on the control socket.
const (
	// The backup process asks PID1:
	OpConfig  = "backup.config"  // no arguments; Config
	OpAudit   = "backup.audit"   // Audit; nothing
	OpCommand = "backup.command" // Command{Source}; Command{Handle} and the command's standard output
	OpExit    = "backup.exit"    // Command{Handle}; Exit: how the command ended
	OpRemove  = "backup.remove"  // Remove; nothing
	// PID1 asks the backup process:
	OpCheck  = "backup.check"  // no arguments; Check
	OpStart  = "backup.start"  // Round{Why}; nothing, or an error (ErrRunning)
	OpRound  = "backup.round"  // Round{Why}; Result, when the round is over
	OpCancel = "backup.cancel" // no arguments; nothing: running rounds end
	OpStatus = "backup.status" // no arguments; a status line
)

// Audit is one backup record the process asks PID1 to append.
type Audit struct {
	Why    string `json:"why"`
	What   string `json:"what"`
	Result string `json:"result"`
}

// Command names a command source (by its index in the config) or a
// started command (by the handle PID1 gave it).
type Command struct {
	Source int    `json:"source,omitempty"`
	Handle uint64 `json:"handle,omitempty"`
}

// Exit is how a command source ended: empty when it exited 0.
type Exit struct {
	Err string `json:"err,omitempty"`
}

// Remove asks PID1 to remove a spool file whose backup is stored.
type Remove struct {
	Dir  string `json:"dir"`
	Name string `json:"name"`
}

// Check is the answer to OpCheck: the store as first reached, or why it
// was not; RegionError is set when the bucket is in another region,
// which is fatal to the boot.
type Check struct {
	Detail      string `json:"detail"`
	Unreachable string `json:"unreachable,omitempty"`
	RegionError string `json:"region_error,omitempty"`
}

// Round is the argument of OpStart and OpRound. Seconds bounds an
// OpRound (the final round's share of the teardown), so that the round
// ends and answers with its failures before PID1 stops waiting.
type Round struct {
	Why     string `json:"why"`
	Seconds int    `json:"seconds,omitempty"`
}

// Result is a round's outcome: one line per source, and how many failed.
type Result struct {
	Lines  []string `json:"lines"`
	Failed int      `json:"failed"`
}

// ErrRunning is the error text of OpStart while a round runs.
const ErrRunning = "a backup is already running"
