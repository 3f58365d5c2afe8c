package backup

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/safego"
	"github.com/bulwarkvm/bulwark/internal/safego/safegotest"
)

// panicFrom makes *hook panic from its nth call on.
func panicFrom(t *testing.T, hook *func(), nth int32) {
	var n atomic.Int32
	*hook = func() {
		if n.Add(1) >= nth {
			panic("injected")
		}
	}
	t.Cleanup(func() { *hook = nil })
}

// within fails the test if fn does not return in time: a pipeline that
// loses a panic leaves the backup waiting for a chunk for ever.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return after a worker panicked", what)
	}
}

func expectReport(t *testing.T, ch chan safego.Report, name string) {
	t.Helper()
	select {
	case r := <-ch:
		if !strings.Contains(r.Name, name) || r.Value != "injected" || !strings.Contains(r.Stack, ".panicFrom.func1") {
			t.Fatalf("report %q: %q, want one of a panic in %q with its stack", r.Name, r.Value, name)
		}
	default:
		t.Fatalf("no report of the panic in %s", name)
	}
}

// TestPanicInSealingWorker: a panic in a worker that seals chunks fails
// the segment (Write or Close returns an error that names it) instead of
// crashing, hanging, or writing a segment with a chunk missing.
func TestPanicInSealingWorker(t *testing.T) {
	k, _ := testKeys()
	ch := safegotest.Reports(t, 64)
	panicFrom(t, &testHookWorker, 3)
	var out bytes.Buffer
	w, err := NewSegmentWriter(&out, &k.PublicKey, dataHeader(0), 2)
	if err != nil {
		t.Fatal(err)
	}
	var werr, cerr error
	within(t, "the segment writer", func() {
		plain := pattern(40 << 16) // 40 chunks
		for p := plain; len(p) > 0 && werr == nil; {
			n := min(len(p), 7919)
			_, werr = w.Write(p[:n])
			p = p[n:]
		}
		cerr = w.Close()
	})
	if werr == nil && cerr == nil {
		t.Fatal("the segment was written whole although a worker panicked")
	}
	for _, err := range []error{werr, cerr} {
		if err != nil && !strings.Contains(err.Error(), "panic in backup pipeline worker: injected") {
			t.Errorf("error %q, want the worker's panic", err)
		}
	}
	expectReport(t, ch, "backup pipeline worker")
}

// TestPanicInOpeningWorker: a panic in a worker that verifies and decrypts
// chunks fails the read with an error, and no plaintext of the chunk it
// was working on is released.
func TestPanicInOpeningWorker(t *testing.T) {
	k, _ := testKeys()
	plain := pattern(10 << 16)
	seg := seal(t, &k.PublicKey, dataHeader(0), plain, 2)
	ch := safegotest.Reports(t, 64)
	panicFrom(t, &testHookWorker, 3)
	var got []byte
	var rerr error
	within(t, "the segment reader", func() { got, rerr = open(keyring(t, k), seg, 2) })
	if rerr == nil || !strings.Contains(rerr.Error(), "panic in backup pipeline worker: injected") {
		t.Fatalf("read: %v, want the worker's panic", rerr)
	}
	if len(got) > 2<<16 || !bytes.Equal(got, plain[:len(got)]) {
		t.Fatalf("%d bytes released; want at most the two chunks before the panic, as sealed", len(got))
	}
	expectReport(t, ch, "backup pipeline worker")
}

// TestPanicInTreeWalker: a panic in the goroutine that walks a tree ends
// the stream with an error, so the backup fails cleanly (no manifest).
func TestPanicInTreeWalker(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	ch := safegotest.Reports(t, 64)
	panicFrom(t, &testHookTree, 1)
	rc := Tree(dir)
	defer rc.Close()
	var err error
	within(t, "reading the tree", func() { _, err = io.Copy(io.Discard, rc) })
	if err == nil || !strings.Contains(err.Error(), "panic in backup tree walker: injected") {
		t.Fatalf("reading the tree: %v, want the walker's panic", err)
	}
	expectReport(t, ch, "backup tree walker")
}
