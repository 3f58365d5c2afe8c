package audit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The log's memory stays bounded however many records it takes: a node
// without a data volume, or one whose management port is flooded, appends
// for as long as it runs.
func TestMemoryBounded(t *testing.T) {
	const n = 100000
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	l := New(nil)
	for i := 0; i < n; i++ {
		if _, err := l.Append(KindRequest, "CN=robot,OU=bulwark-role:control-plane,O=acme (control-plane) from 10.99.0.5:58692", "9f01", "GET /v1/status", "200 ok"); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	grew := int64(m1.HeapAlloc) - int64(m0.HeapAlloc)
	if _, seq := l.Head(); seq != n {
		t.Fatalf("head seq %d, want %d", seq, n)
	}
	runtime.KeepAlive(l)
	if grew > 8<<20 {
		t.Fatalf("the log holds %.1f MiB after %d appends; it must stay bounded", float64(grew)/(1<<20), n)
	}
	t.Logf("heap grew by %.2f MiB over %d appends", float64(grew)/(1<<20), n)
}

// A write that fails (the file system is full) leaves neither a record the
// file lacks nor a partial line in the file: the next record, once there
// is room again, continues the chain, and the file verifies against the
// head the log reports.
func TestAppendDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to mount a small tmpfs; make test runs it as root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	l := New(nil)
	l.Append(KindBoot, "", "", "init started", "ok")
	p := filepath.Join(dir, "audit.log")
	if err := l.Attach(p); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := l.Append(KindRequest, "x", "", "before the disk fills", "ok"); err != nil {
			t.Fatal(err)
		}
	}
	// Fill the file system to the last byte.
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{'f'}, 4096)
	for len(chunk) > 0 {
		if _, err := filler.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			chunk = chunk[:len(chunk)/2]
		}
	}
	filler.Close()
	// The audit file's last page may still have room for part of a line.
	if _, err := l.Append(KindRequest, "x", "", "while the disk is full "+strings.Repeat("y", 4000), "ok"); err == nil {
		t.Fatal("an append to a full file system reported success")
	}
	os.Remove(filler.Name())
	if _, err := l.Append(KindRequest, "x", "", "after room was made", "ok"); err != nil {
		t.Fatal(err)
	}
	head, seq := l.Head()
	l.Close()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	n, _, err := Verify(bytes.NewReader(b), head)
	if err != nil {
		t.Fatalf("the file after a failed write: %v", err)
	}
	if n != 5 || seq != 5 {
		t.Fatalf("%d records in the file, head seq %d; want 5 and 5", n, seq)
	}
	if bytes.Contains(b, []byte("while the disk is full")) {
		t.Fatal("the failed record is in the file")
	}
}
