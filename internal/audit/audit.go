// Package audit is the node's tamper-evident audit log: JSON lines, each
// record holding the SHA-256 of the one before it, so that an edited,
// deleted, inserted or reordered record breaks the chain where it
// happened. The format is in docs/audit.md.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Kinds of record.
const (
	KindBoot     = "boot"
	KindConfig   = "config"
	KindRequest  = "request" // a management API call, allowed or refused
	KindShutdown = "shutdown"
	KindBackup   = "backup"
)

// Genesis is the prev of the first record.
var Genesis = strings.Repeat("0", 64)

// Record is one audit entry. Field order is the hashed order.
type Record struct {
	Seq    uint64 `json:"seq"`
	Time   string `json:"time"` // RFC 3339, UTC, nanoseconds
	Kind   string `json:"kind"`
	Who    string `json:"who,omitempty"`    // certificate subject, or the remote address when there is none
	Serial string `json:"serial,omitempty"` // certificate serial (hex)
	What   string `json:"what"`
	Result string `json:"result"`
	Prev   string `json:"prev"`
	Hash   string `json:"hash"`
}

// digest is the SHA-256 of the record's JSON with the hash field empty.
func (r Record) digest() string {
	r.Hash = ""
	b, _ := json.Marshal(r)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Log appends records. Records are kept in memory and, once a file is
// attached, written to it (fsync per record).
type Log struct {
	mu    sync.Mutex
	recs  []Record
	buf   bytes.Buffer // the whole log as written
	file  *os.File
	echo  func(Record)
	clock func() time.Time
}

// New returns an empty log. echo, when set, sees every record (the init
// prints them on the console).
func New(echo func(Record)) *Log {
	return &Log{echo: echo, clock: time.Now}
}

// Append adds a record and returns it.
func (l *Log) Append(kind, who, serial, what, result string) (Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := Record{
		Seq:    uint64(len(l.recs)) + 1,
		Time:   l.clock().UTC().Format(time.RFC3339Nano),
		Kind:   kind,
		Who:    who,
		Serial: serial,
		What:   what,
		Result: result,
		Prev:   Genesis,
	}
	if n := len(l.recs); n > 0 {
		r.Prev = l.recs[n-1].Hash
	}
	r.Hash = r.digest()
	line, err := json.Marshal(r)
	if err != nil {
		return r, err
	}
	line = append(line, '\n')
	l.recs = append(l.recs, r)
	l.buf.Write(line)
	var werr error
	if l.file != nil {
		werr = writeSync(l.file, line)
	}
	if l.echo != nil {
		l.echo(r)
	}
	return r, werr
}

func writeSync(f *os.File, b []byte) error {
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// Attach starts writing to path (created owner-only, appended to): the
// records so far first, then every new one.
func (l *Log) Attach(path string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		return errors.New("audit: a file is already attached")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if err := writeSync(f, l.buf.Bytes()); err != nil {
		f.Close()
		return err
	}
	l.file = f
	return nil
}

// Bytes returns the whole log as written.
func (l *Log) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.buf.Bytes())
}

// Snapshot returns the whole log with the hash and seq of its last record,
// taken together.
func (l *Log) Snapshot() ([]byte, string, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	head, seq := Genesis, uint64(0)
	if n := len(l.recs); n > 0 {
		head, seq = l.recs[n-1].Hash, l.recs[n-1].Seq
	}
	return bytes.Clone(l.buf.Bytes()), head, seq
}

// Head is the hash of the last record (Genesis when empty) and its seq.
func (l *Log) Head() (string, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.recs) == 0 {
		return Genesis, 0
	}
	r := l.recs[len(l.recs)-1]
	return r.Hash, r.Seq
}

// Close closes the attached file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil {
		return nil
	}
	err := l.file.Close()
	l.file = nil
	return err
}

// Verify reads a log and checks every record: its hash, its sequence
// number and its link to the one before. It returns the number of records
// and the head hash, or an error naming the first record (by line) where
// the chain breaks and how. head, when not empty, must equal the last
// record's hash: it catches records cut off the end, which a chain alone
// cannot show.
func Verify(r io.Reader, head string) (int, string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	prev := Genesis
	n := 0
	for line := 1; sc.Scan(); line++ {
		var rec Record
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			return n, prev, fmt.Errorf("line %d: not an audit record: %v", line, err)
		}
		switch {
		case rec.Hash != rec.digest():
			return n, prev, fmt.Errorf("line %d (seq %d): edited: the record does not match its hash", line, rec.Seq)
		case rec.Seq < uint64(line):
			return n, prev, fmt.Errorf("line %d: seq %d where %d belongs: a record was inserted, duplicated or moved here", line, rec.Seq, line)
		case rec.Seq > uint64(line):
			return n, prev, fmt.Errorf("line %d: seq %d where %d belongs: record %d is missing (deleted or moved)", line, rec.Seq, line, line)
		case rec.Prev != prev:
			return n, prev, fmt.Errorf("line %d (seq %d): its prev does not match the hash of the record before: the chain was rewritten here", line, rec.Seq)
		}
		if _, err := time.Parse(time.RFC3339Nano, rec.Time); err != nil {
			return n, prev, fmt.Errorf("line %d (seq %d): bad time %q", line, rec.Seq, rec.Time)
		}
		prev = rec.Hash
		n++
	}
	if err := sc.Err(); err != nil {
		return n, prev, fmt.Errorf("audit: %w", err)
	}
	if head != "" && head != prev {
		return n, prev, fmt.Errorf("the last record's hash %s is not the head %s the node reported: records were cut off the end or the log is another node's", prev, head)
	}
	return n, prev, nil
}
