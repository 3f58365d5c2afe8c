package audit

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// Without a file only the latest records are kept; a copy says where it
// begins, and verifies from that anchor, not from genesis.
func TestMemoryRingAnchor(t *testing.T) {
	l := New(nil)
	l.maxRecords = 10
	for i := 0; i < 25; i++ {
		l.Append(KindRequest, "x", "", "call", "ok")
	}
	v, err := l.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(v)
	v.Close()
	if v.Start.Seq != 16 || v.Seq != 25 || v.Start.Prev == Genesis || l.mem.n != 10 {
		t.Fatalf("view from %d to %d (prev %s), %d held", v.Start.Seq, v.Seq, v.Start.Prev, l.mem.n)
	}
	if _, _, err := Verify(bytes.NewReader(b), v.Head); err == nil || !strings.Contains(err.Error(), "seq 16 where 1 belongs") {
		t.Fatalf("a copy without its first records verified from genesis: %v", err)
	}
	if n, _, err := VerifyFrom(bytes.NewReader(b), v.Start, v.Head); err != nil || n != 10 {
		t.Fatalf("from the anchor: %d %v", n, err)
	}
	if n, _, err := VerifyFrom(bytes.NewReader(b), Anchor{Seq: 16}, v.Head); err != nil || n != 10 {
		t.Fatalf("from seq 16, unanchored: %d %v", n, err)
	}
	if _, _, err := VerifyFrom(bytes.NewReader(b), Anchor{Seq: 16, Prev: Genesis}, ""); err == nil || !strings.Contains(err.Error(), "not the anchor") {
		t.Fatalf("a wrong anchor: %v", err)
	}
	// The byte bound holds too, and always keeps the newest record.
	l.maxBytes = 1
	l.Append(KindRequest, "x", "", "call", "ok")
	if l.mem.n != 1 {
		t.Fatalf("%d records held under a one-byte bound", l.mem.n)
	}
}

// Once a file is attached the records live in it only; a copy reads the
// whole chain from the file, as of its instant, even after Close.
func TestSnapshotFromFile(t *testing.T) {
	l := New(nil)
	l.Append(KindBoot, "", "", "init started", "ok")
	p := filepath.Join(t.TempDir(), "audit.log")
	if err := l.Attach(p); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 500; i++ {
		if _, err := l.Append(KindRequest, "x", "", "call", "ok"); err != nil {
			t.Fatal(err)
		}
	}
	if l.mem.n != 0 || len(l.mem.buf) != 0 {
		t.Fatalf("%d records still held in memory with a file attached", l.mem.n)
	}
	v, err := l.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	l.Append(KindRequest, "x", "", "after the snapshot", "ok")
	l.Close()
	b, err := io.ReadAll(v)
	v.Close()
	if err != nil {
		t.Fatal(err)
	}
	if v.Start != FromGenesis || int64(len(b)) != v.Size {
		t.Fatalf("view from %+v, %d bytes of %d", v.Start, len(b), v.Size)
	}
	if n, _, err := Verify(bytes.NewReader(b), v.Head); err != nil || n != 501 {
		t.Fatalf("%d records: %v", n, err)
	}
}

// Records that overflowed memory before the file was attached are gone;
// the file begins where memory did, and says so.
func TestAttachAfterOverflow(t *testing.T) {
	l := New(nil)
	l.maxRecords = 4
	for i := 0; i < 6; i++ {
		l.Append(KindBoot, "", "", "early", "ok")
	}
	if err := l.Attach(filepath.Join(t.TempDir(), "audit.log")); err != nil {
		t.Fatal(err)
	}
	l.Append(KindBoot, "", "", "late", "ok")
	v, _ := l.Snapshot()
	defer v.Close()
	if v.Start.Seq != 3 {
		t.Fatalf("file begins at %d, want 3", v.Start.Seq)
	}
	if n, _, err := VerifyFrom(v, v.Start, v.Head); err != nil || n != 5 {
		t.Fatalf("%d %v", n, err)
	}
}

// After Close nothing more is recorded, and the log says so.
func TestAppendAfterClose(t *testing.T) {
	for _, file := range []bool{false, true} {
		l := New(nil)
		l.Append(KindBoot, "", "", "init started", "ok")
		if file {
			l.Attach(filepath.Join(t.TempDir(), "audit.log"))
		}
		l.Close()
		if _, err := l.Append(KindShutdown, "", "", "late", "ok"); !errors.Is(err, ErrClosed) {
			t.Fatalf("file %v: append after close: %v", file, err)
		}
		if _, err := l.Start(KindRequest, "x", "", "late"); !errors.Is(err, ErrClosed) {
			t.Fatalf("file %v: start after close: %v", file, err)
		}
		if _, seq := l.Head(); seq != 1 {
			t.Fatalf("file %v: head seq %d after refused appends", file, seq)
		}
	}
}

// A result names its started record; the verifier checks that it does.
func TestStartFinish(t *testing.T) {
	l := New(nil)
	a, _ := l.Start(KindRequest, "CN=robot", "9f", "POST /v1/backup")
	b, _ := l.Start(KindRequest, "CN=alice", "1f", "GET /v1/status")
	l.Finish(b, "200 ok")
	f, _ := l.Finish(a, "202 ok")
	if f.Ref != a.Seq || f.Who != "CN=robot" || f.What != "POST /v1/backup" || a.Result != ResultStarted {
		t.Fatalf("%+v for %+v", f, a)
	}
	head, _ := l.Head()
	if _, _, err := Verify(bytes.NewReader(l.Bytes()), head); err != nil {
		t.Fatal(err)
	}
	// m: 1 boot, 2 started, 3 its result; then one record with ref.
	for name, ref := range map[string]uint64{"a second result": 2, "a result of a plain record": 1, "a result of a later record": 99} {
		m := New(nil)
		m.Append(KindBoot, "", "", "init started", "ok")
		a, _ := m.Start(KindRequest, "x", "", "x")
		m.Finish(a, "ok")
		r := Record{Kind: KindRequest, What: "x", Result: "ok", Ref: ref}
		m.add(r)
		if _, _, err := Verify(bytes.NewReader(m.Bytes()), ""); err == nil || !strings.Contains(err.Error(), "names no started record") {
			t.Errorf("%s: %v", name, err)
		}
	}
}
