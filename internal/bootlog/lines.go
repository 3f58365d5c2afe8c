package bootlog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"unicode/utf8"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// MaxLine is the longest piece of an untrusted line (the workload's output,
// a backup command's standard error) that becomes one console line; a
// longer line is cut into pieces of at most this many bytes. Together with
// the prefixes and the escaping it keeps a console line short enough to
// read, and the kernel log record of it bounded.
const MaxLine = 4096

// Continued ends every piece of a cut line but its last.
const Continued = " [continued]"

// QueueBytes bounds the text read but not yet emitted. A console slower
// than the writer (a serial line moves about 11 KiB/s) must not stall the
// writer: once this much waits, further lines are dropped and counted
// instead (a "[N bytes dropped]" line takes their place), so the reader
// keeps draining the pipe and the writer's writes always complete.
const QueueBytes = 256 << 10

// pieceCost is charged per queued piece on top of its text, so that a
// flood of empty lines is bounded as well.
const pieceCost = 32

// minLine is the smallest max CopyLines accepts: a piece must have room
// for a whole rune, since pieces are cut on rune boundaries.
const minLine = 2 * utf8.UTFMax

// CopyLines reads r until it ends and calls emit once per line, without
// its line ending ("\n" or "\r\n"). A line longer than max bytes is cut
// into pieces of at most max bytes, on a UTF-8 rune boundary where the
// text is valid UTF-8; every piece but the last ends with Continued. A
// last line without a newline is emitted when r ends.
//
// Reading runs in its own goroutine and never waits for emit: when emit
// falls more than QueueBytes behind, lines are dropped and emit receives
// "[N bytes dropped]" (N counts the dropped text and line endings) in
// their place, in order. So a writer on the other end of a pipe is never
// blocked by a slow or stuck emit, and never sees the pipe close while it
// still has it open. If emit panics, the panic goes to CopyLines' caller
// and the reading goroutine carries on draining r (discarding, counted)
// until it ends. If the reading goroutine panics, the panic is reported
// (safego), the rest of r is read and counted as dropped all the same,
// and CopyLines returns an error naming the panic once r ends.
//
// CopyLines returns once r has ended and everything queued is emitted; the
// error is r's, other than io.EOF.
func CopyLines(r io.Reader, max int, emit func(string)) error {
	return copyLines(r, max, QueueBytes, emit)
}

func copyLines(r io.Reader, max, queueBytes int, emit func(string)) error {
	if max < minLine {
		return fmt.Errorf("bootlog: line limit %d is below the minimum of %d bytes", max, minLine)
	}
	q := &queue{limit: queueBytes}
	q.cond.L = &q.mu
	go q.fill(r, max)
	for {
		p, ok := q.next()
		if p.droppedBefore > 0 {
			emit(fmt.Sprintf("[%d bytes dropped]", p.droppedBefore))
		}
		if !ok {
			return q.err
		}
		if !p.countOnly {
			emit(p.text)
		}
	}
}

// piece is one line, or one piece of a cut line, waiting to be emitted.
type piece struct {
	text          string
	droppedBefore int64 // bytes dropped between the piece before and this one
	countOnly     bool  // no text: only the drop count, to report it now
}

// queue is the bounded buffer between the reading goroutine and emit.
type queue struct {
	mu      sync.Mutex
	cond    sync.Cond
	limit   int
	pieces  []piece
	bytes   int   // cost of the queued pieces
	dropped int64 // bytes dropped after the last queued piece
	done    bool  // r has ended
	err     error
}

// put queues a piece if it fits, or counts it as dropped; n is the number
// of bytes of r the piece stands for (its text and line ending).
func (q *queue) put(text string, n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	cost := len(text) + pieceCost
	if q.bytes+cost > q.limit {
		q.dropped += int64(n)
		q.cond.Signal()
		return
	}
	q.pieces = append(q.pieces, piece{text: text, droppedBefore: q.dropped})
	q.dropped = 0
	q.bytes += cost
	q.cond.Signal()
}

// next waits for a piece to emit; ok is false once r has ended and all is
// emitted. A returned piece may carry only a drop count (countOnly): when
// nothing is queued, drops are reported at once rather than with the next
// line, which may be long in coming.
func (q *queue) next() (piece, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.pieces) == 0 && q.dropped == 0 && !q.done {
		q.cond.Wait()
	}
	if len(q.pieces) > 0 {
		p := q.pieces[0]
		q.pieces[0] = piece{}
		q.pieces = q.pieces[1:]
		q.bytes -= len(p.text) + pieceCost
		return p, true
	}
	if q.dropped > 0 {
		p := piece{droppedBefore: q.dropped, countOnly: true}
		q.dropped = 0
		return p, !q.done
	}
	return piece{}, false
}

// testHookFill, nil outside tests, runs at the start of the reading
// goroutine.
var testHookFill func()

// fill is the reading goroutine: it splits r into pieces and queues them
// until r ends, then marks the queue done. It calls nothing it does not
// own, so nothing but r can hold it up. A panic while splitting is
// reported (the init runs this in PID1, where it would bring the node
// down); the rest of r is then read and dropped, counted, because the
// writer must neither block on a full pipe nor see it closed while it
// runs, and CopyLines returns an error naming the panic.
func (q *queue) fill(r io.Reader, max int) {
	err := safego.Call("bootlog line reader", func() error { return q.split(r, max) })
	var pe *safego.PanicError
	if errors.As(err, &pe) {
		if derr := safego.Call("bootlog line reader", func() error { return q.discard(r) }); derr != nil {
			err = fmt.Errorf("%w; reading on: %w", err, derr)
		}
		err = fmt.Errorf("bootlog: reading lines: %w; the rest was dropped", err)
	}
	q.mu.Lock()
	q.done, q.err = true, err
	q.cond.Signal()
	q.mu.Unlock()
}

// discard reads r to its end, counting every byte as dropped.
func (q *queue) discard(r io.Reader) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			q.mu.Lock()
			q.dropped += int64(n)
			q.cond.Signal()
			q.mu.Unlock()
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// split splits r into pieces and queues them until r ends; the error is
// r's, other than io.EOF.
func (q *queue) split(r io.Reader, max int) error {
	if testHookFill != nil {
		testHookFill()
	}
	buf := make([]byte, 32<<10)
	line := make([]byte, 0, max)
	for {
		n, rerr := r.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			chunk := data
			if i >= 0 {
				chunk = data[:i]
			}
			// Cut whenever the line reaches max bytes; only the bytes
			// past the cut stay for the next piece.
			for len(line)+len(chunk) > max {
				take := max - len(line)
				line = append(line, chunk[:take]...)
				chunk = chunk[take:]
				cut := runeCut(line)
				q.put(string(line[:cut])+Continued, cut)
				line = append(line[:0], line[cut:]...)
			}
			line = append(line, chunk...)
			if i < 0 {
				break
			}
			data = data[i+1:]
			text := line
			if k := len(text); k > 0 && text[k-1] == '\r' {
				text = text[:k-1]
			}
			q.put(string(text), len(line)+1)
			line = line[:0]
		}
		if rerr != nil {
			if len(line) > 0 {
				q.put(string(line), len(line))
			}
			if !errors.Is(rerr, io.EOF) {
				return rerr
			}
			return nil
		}
	}
}

// runeCut is where to cut a full line buffer: before a rune that would
// cross its end, so that no piece ends in half a rune. Text that is not
// UTF-8 there is cut at the end.
func runeCut(line []byte) int {
	end := len(line)
	for i := end - 1; i > 0 && i >= end-utf8.UTFMax; i-- {
		if utf8.RuneStart(line[i]) {
			if !utf8.FullRune(line[i:]) {
				return i // a rune begun here continues past the cut
			}
			return end
		}
	}
	return end
}
