package initramfs

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

func read(t *testing.T, b []byte) map[string]cpio.Record {
	t.Helper()
	// Decompressed by the lz4 tool, not by the library that wrote it, as
	// an independent check of the legacy frame the kernel reads.
	cmd := exec.Command("lz4", "-d", "-c")
	cmd.Stdin = bytes.NewReader(b)
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("lz4 -d: %v", err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]cpio.Record{}
	for _, r := range recs {
		m[r.Name] = r
	}
	return m
}

func build(t *testing.T) []byte {
	t.Helper()
	a := New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.AddFile("/init", []byte("#!init"), 0o755))
	must(a.AddFile("etc/bulwark/modules.list", []byte("ext4\n"), 0o644))
	must(a.AddCharDev("/dev/console", 0o600, 5, 1))
	must(a.AddHostPath("/lib64/ld-linux-x86-64.so.2"))
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReproducibleAndReadable(t *testing.T) {
	a, b := build(t), build(t)
	if !bytes.Equal(a, b) {
		t.Fatal("two builds of the same archive differ")
	}
	m := read(t, a)
	for _, want := range []string{"init", "etc", "etc/bulwark", "etc/bulwark/modules.list", "dev/console", "lib64"} {
		if _, ok := m[want]; !ok {
			t.Errorf("archive lacks %s", want)
		}
	}
	if r := m["dev/console"]; r.Mode&cpio.S_IFMT != cpio.S_IFCHR || r.Rmajor != 5 || r.Rminor != 1 {
		t.Errorf("dev/console is %v", r.Info)
	}
	if r := m["init"]; r.MTime != 0 || r.UID != 0 || r.Mode&0o777 != 0o755 {
		t.Errorf("init metadata %v", r.Info)
	}
	// The loader path must resolve inside the archive to a regular file.
	if st, err := os.Lstat("/lib64"); err == nil && st.Mode()&os.ModeSymlink != 0 {
		if r := m["lib64"]; r.Mode&cpio.S_IFMT != cpio.S_IFLNK {
			t.Errorf("host /lib64 is a symlink, archive lib64 is %v", r.Info)
		}
	}
	found := false
	for name, r := range m {
		if r.Mode&cpio.S_IFMT == cpio.S_IFREG && len(name) > 0 && bytes.HasSuffix([]byte(name), []byte("ld-linux-x86-64.so.2")) {
			found = true
		}
	}
	if !found {
		t.Error("the loader's target file is missing")
	}
}

func TestConflict(t *testing.T) {
	a := New()
	if err := a.AddFile("x", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.AddFile("/x", []byte("1"), 0o644); err != nil {
		t.Fatalf("identical re-add refused: %v", err)
	}
	if err := a.AddFile("x", []byte("2"), 0o644); err == nil {
		t.Fatal("conflicting re-add accepted")
	}
}

func TestBelowSymlink(t *testing.T) {
	a := New()
	if err := a.AddSymlink("/lib", "usr/lib"); err != nil {
		t.Fatal(err)
	}
	if err := a.AddFile("/lib/modules/x.ko", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteTo(io.Discard); err == nil {
		t.Fatal("an entry below a symlink was written")
	}
}
