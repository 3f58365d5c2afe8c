// Package audit is the node's tamper-evident audit log: JSON lines, each
// record holding the SHA-256 of the one before it, so that an edited,
// deleted, inserted or reordered record breaks the chain where it
// happened. The format is in docs/management.md ("The audit log").
//
// A record that cannot be written is not part of the chain: Append returns
// the error and the log stays as it was, so that callers can refuse what
// they were about to do (the management API fails closed on it).
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

	"golang.org/x/sys/unix"
)

// Kinds of record.
const (
	KindBoot     = "boot"
	KindConfig   = "config"
	KindRequest  = "request" // a management API call, allowed or refused
	KindShutdown = "shutdown"
	KindBackup   = "backup"
)

// ResultStarted is the result of a record written before its action runs
// (Start); the record with the action's result names it in its ref.
const ResultStarted = "started"

// Genesis is the prev of the first record.
var Genesis = strings.Repeat("0", 64)

// ErrClosed answers an Append after Close: no record can be written any
// more, so nothing that needs one may happen.
var ErrClosed = errors.New("audit: the log is closed")

// Record is one audit entry. Field order is the hashed order.
type Record struct {
	Seq    uint64 `json:"seq"`
	Time   string `json:"time"` // RFC 3339, UTC, nanoseconds
	Kind   string `json:"kind"`
	Who    string `json:"who,omitempty"`    // certificate subject, or the remote address when there is none
	Serial string `json:"serial,omitempty"` // certificate serial (hex)
	What   string `json:"what"`
	Result string `json:"result"`
	// Ref is the seq of the "started" record whose action this record
	// gives the result of; 0 (absent) for a record that stands alone.
	// omitempty keeps records without one byte for byte (and hash for
	// hash) what they were before the field existed.
	Ref  uint64 `json:"ref,omitempty"`
	Prev string `json:"prev"`
	Hash string `json:"hash"`
}

// digest is the SHA-256 of the record's JSON with the hash field empty.
func (r Record) digest() string {
	r.Hash = ""
	b, _ := json.Marshal(r)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Anchor is where a copy of the log begins: the seq of its first record
// and that record's prev (the hash of the record before it, which the copy
// does not hold). The whole chain begins at FromGenesis.
type Anchor struct {
	Seq  uint64
	Prev string
}

// FromGenesis is the anchor of a log that starts with its first record.
var FromGenesis = Anchor{Seq: 1, Prev: Genesis}

// Bounds of the records kept in memory while no file is attached. The
// init attaches the file a few records into the boot; a node without a
// data volume keeps only the latest records (see docs/management.md).
const (
	DefaultMemoryRecords = 4096
	DefaultMemoryBytes   = 4 << 20
)

// Log appends records. Until a file is attached it keeps the latest
// records in a bounded ring in memory; once a file is attached every
// record goes to the file only (fsync per record), and copies are read
// back from it. Either way the log holds the last record's hash and seq,
// which chain the next one.
type Log struct {
	mu    sync.Mutex
	head  string // hash of the last record (Genesis when empty)
	seq   uint64 // seq of the last record
	mem   ring   // the latest records while no file is attached
	file  *os.File
	size  int64  // bytes of whole records in the file
	start Anchor // where the file begins
	// broken is set when a failed write could not be undone: the file
	// may end in part of a record, so no record may follow it.
	broken error
	closed bool
	echo   func(Record)
	clock  func() time.Time
	// Bounds of mem (tests lower them).
	maxRecords, maxBytes int
}

// New returns an empty log. echo, when set, sees every record that was
// written (the init prints them on the console).
func New(echo func(Record)) *Log {
	return &Log{head: Genesis, echo: echo, clock: time.Now,
		maxRecords: DefaultMemoryRecords, maxBytes: DefaultMemoryBytes}
}

// Append adds a record that stands alone and returns it. When the record
// cannot be written (the file system is full, the file or the log was
// closed) it returns an error and the log is unchanged.
func (l *Log) Append(kind, who, serial, what, result string) (Record, error) {
	return l.add(Record{Kind: kind, Who: who, Serial: serial, What: what, Result: result})
}

// Start records that an action is about to run (who asked for what), with
// result "started". The action may run only when it returns no error;
// Finish records its result.
func (l *Log) Start(kind, who, serial, what string) (Record, error) {
	return l.add(Record{Kind: kind, Who: who, Serial: serial, What: what, Result: ResultStarted})
}

// Finish records the result of the action that started records, linked
// to it by ref.
func (l *Log) Finish(started Record, result string) (Record, error) {
	return l.add(Record{Kind: started.Kind, Who: started.Who, Serial: started.Serial, What: started.What, Result: result, Ref: started.Seq})
}

func (l *Log) add(r Record) (Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Record{}, ErrClosed
	}
	if l.broken != nil {
		return Record{}, l.broken
	}
	r.Seq = l.seq + 1
	r.Time = l.clock().UTC().Format(time.RFC3339Nano)
	r.Prev = l.head
	r.Hash = r.digest()
	line, err := json.Marshal(r)
	if err != nil {
		return Record{}, fmt.Errorf("audit: %w", err)
	}
	line = append(line, '\n')
	if l.file != nil {
		if err := l.write(line); err != nil {
			return Record{}, fmt.Errorf("audit: record %d not written: %w", r.Seq, err)
		}
	} else {
		l.mem.push(entry{seq: r.Seq, prev: r.Prev, line: line}, l.maxRecords, l.maxBytes)
	}
	l.seq, l.head = r.Seq, r.Hash
	if l.echo != nil {
		l.echo(r)
	}
	return r, nil
}

// write appends one record to the file and flushes it. On failure it cuts
// off whatever part of the line reached the file, so that the file still
// ends with a whole record and the next one can follow.
func (l *Log) write(line []byte) error {
	n, err := l.file.Write(line)
	if err == nil {
		err = l.file.Sync()
	}
	if err == nil {
		l.size += int64(n)
		return nil
	}
	if terr := l.file.Truncate(l.size); terr != nil {
		l.broken = fmt.Errorf("audit: the file may end in part of a record (a write failed: %v; cutting it off failed: %v); the log takes no more records", err, terr)
	}
	return err
}

// Attach starts writing to path (created owner-only, appended to): the
// records held in memory first, then every new one. From then on the
// records are kept in the file only.
func (l *Log) Attach(path string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		return ErrClosed
	case l.file != nil:
		return errors.New("audit: a file is already attached")
	}
	// Read and write: copies are read back through this descriptor, never
	// by path (the directory lies on the workload's volume).
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	b := l.mem.bytes()
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("audit: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("audit: %w", err)
	}
	l.file, l.size, l.start = f, int64(len(b)), l.memStart()
	l.mem = ring{}
	return nil
}

// memStart is where the records in memory begin.
func (l *Log) memStart() Anchor {
	if e, ok := l.mem.oldest(); ok {
		return Anchor{Seq: e.seq, Prev: e.prev}
	}
	// Nothing in memory: the next record is the first one held.
	return Anchor{Seq: l.seq + 1, Prev: l.head}
}

// View is a copy of the log as it was at one instant: its records from
// Start on, ending with the record Seq whose hash is Head. Read it, then
// Close it.
type View struct {
	Start Anchor
	Head  string
	Seq   uint64
	Size  int64 // bytes
	r     io.Reader
	f     *os.File
}

func (v *View) Read(p []byte) (int, error) { return v.r.Read(p) }

// File is the descriptor a view of the log's file reads from; nil for a
// view of memory.
func (v *View) File() *os.File { return v.f }

// ViewOf is a view read from f (size bytes from its start): a copy of the
// log that another process passed on (the management API's process gets
// PID1's log this way, read-only).
func ViewOf(start Anchor, head string, seq uint64, size int64, f *os.File) *View {
	return &View{Start: start, Head: head, Seq: seq, Size: size, f: f, r: io.NewSectionReader(f, 0, size)}
}

// Close releases the view's descriptor, if any.
func (v *View) Close() error {
	if v.f != nil {
		return v.f.Close()
	}
	return nil
}

// Snapshot returns the log as it is now. With a file attached it reads
// from the file (the whole chain, from genesis when the file holds it);
// without, from memory, where only the latest records are kept: Start
// then says where the copy begins.
func (l *Log) Snapshot() (*View, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := &View{Head: l.head, Seq: l.seq}
	if l.file == nil {
		b := l.mem.bytes()
		v.Start, v.Size, v.r = l.memStart(), int64(len(b)), bytes.NewReader(b)
		return v, nil
	}
	// A descriptor of its own, so that the copy can be read while records
	// are appended and even after Close; records appended later lie past
	// Size and are not part of this view.
	rc, err := l.file.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	var fd int
	cerr := rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if cerr != nil || err != nil {
		return nil, fmt.Errorf("audit: reading the file: %w", errors.Join(cerr, err))
	}
	v.f = os.NewFile(uintptr(fd), l.file.Name())
	v.Start, v.Size, v.r = l.start, l.size, io.NewSectionReader(v.f, 0, l.size)
	return v, nil
}

// Bytes returns the log as Snapshot has it, read into memory (tests and
// small logs); nil when it cannot be read.
func (l *Log) Bytes() []byte {
	v, err := l.Snapshot()
	if err != nil {
		return nil
	}
	defer v.Close()
	b, err := io.ReadAll(v)
	if err != nil {
		return nil
	}
	return b
}

// Head is the hash of the last record (Genesis when empty) and its seq.
func (l *Log) Head() (string, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head, l.seq
}

// Close closes the attached file. Afterwards every Append fails with
// ErrClosed: at shutdown the file's volume is erased next, and a record
// that is nowhere would be worse than a refusal.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.file == nil {
		return nil
	}
	err := l.file.Close()
	l.file = nil
	return err
}

// entry is one record in memory.
type entry struct {
	seq  uint64
	prev string
	line []byte
}

// ring holds the latest records: at most maxRecords of them and at most
// maxBytes of lines (but always the newest one).
type ring struct {
	buf   []entry // circular once it has reached maxRecords
	first int     // index of the oldest
	n     int
	size  int // bytes of lines
}

func (r *ring) push(e entry, maxRecords, maxBytes int) {
	for r.n > 0 && (r.n >= maxRecords || r.size+len(e.line) > maxBytes) {
		r.size -= len(r.buf[r.first].line)
		r.buf[r.first] = entry{}
		r.first = (r.first + 1) % len(r.buf)
		r.n--
	}
	if r.n == len(r.buf) {
		// Grow (at most to maxRecords), oldest first.
		c := min(max(2*len(r.buf), 16), maxRecords)
		nb := make([]entry, c)
		for i := 0; i < r.n; i++ {
			nb[i] = r.buf[(r.first+i)%len(r.buf)]
		}
		r.buf, r.first = nb, 0
	}
	r.buf[(r.first+r.n)%len(r.buf)] = e
	r.n++
	r.size += len(e.line)
}

func (r *ring) oldest() (entry, bool) {
	if r.n == 0 {
		return entry{}, false
	}
	return r.buf[r.first], true
}

func (r *ring) bytes() []byte {
	b := make([]byte, 0, r.size)
	for i := 0; i < r.n; i++ {
		b = append(b, r.buf[(r.first+i)%len(r.buf)].line...)
	}
	return b
}

// Verify reads a log and checks every record: its hash, its sequence
// number and its link to the one before. It returns the number of records
// and the head hash, or an error naming the first record (by line) where
// the chain breaks and how. head, when not empty, must equal the last
// record's hash: it catches records cut off the end, which a chain alone
// cannot show.
func Verify(r io.Reader, head string) (int, string, error) {
	return VerifyFrom(r, FromGenesis, head)
}

// VerifyFrom is Verify for a copy that begins at from instead of the
// first record: its first record must have seq from.Seq and prev
// from.Prev. An empty from.Prev takes the first record's prev as it is:
// the copy is then checked from there on, not linked to what came before.
func VerifyFrom(r io.Reader, from Anchor, head string) (int, string, error) {
	if from.Seq == 0 {
		from.Seq = 1
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	prev := from.Prev
	if prev == "" && from.Seq == 1 {
		prev = Genesis
	}
	// started records of this copy whose result has not come yet.
	open := map[uint64]bool{}
	n := 0
	for line := 1; sc.Scan(); line++ {
		var rec Record
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			return n, prev, fmt.Errorf("line %d: not an audit record: %v", line, err)
		}
		want := from.Seq + uint64(line) - 1
		switch {
		case rec.Hash != rec.digest():
			return n, prev, fmt.Errorf("line %d (seq %d): edited: the record does not match its hash", line, rec.Seq)
		case rec.Seq < want:
			return n, prev, fmt.Errorf("line %d: seq %d where %d belongs: a record was inserted, duplicated or moved here", line, rec.Seq, want)
		case rec.Seq > want:
			return n, prev, fmt.Errorf("line %d: seq %d where %d belongs: record %d is missing (deleted or moved)", line, rec.Seq, want, want)
		case prev != "" && rec.Prev != prev:
			if line == 1 {
				return n, prev, fmt.Errorf("line 1 (seq %d): its prev is not the anchor %s: the copy does not continue that chain", rec.Seq, prev)
			}
			return n, prev, fmt.Errorf("line %d (seq %d): its prev does not match the hash of the record before: the chain was rewritten here", line, rec.Seq)
		}
		if _, err := time.Parse(time.RFC3339Nano, rec.Time); err != nil {
			return n, prev, fmt.Errorf("line %d (seq %d): bad time %q", line, rec.Seq, rec.Time)
		}
		if rec.Ref != 0 {
			// A result names a started record before it; one inside this
			// copy must still be waiting for its result.
			if rec.Ref >= rec.Seq || (rec.Ref >= from.Seq && !open[rec.Ref]) {
				return n, prev, fmt.Errorf("line %d (seq %d): ref %d names no started record before it that awaits a result", line, rec.Seq, rec.Ref)
			}
			delete(open, rec.Ref)
		} else if rec.Result == ResultStarted {
			open[rec.Seq] = true
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
