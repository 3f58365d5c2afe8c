package elfdeps

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestAgainstLoader compares the header-based resolution with what the
// system's dynamic loader reports for the same binary (ld.so --list).
func TestAgainstLoader(t *testing.T) {
	const exe = "/usr/sbin/mke2fs"
	got, err := Resolve([]string{exe}, DefaultLibDirs)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("/lib64/ld-linux-x86-64.so.2", "--list", exe).Output()
	if err != nil {
		t.Fatalf("ld.so --list: %v", err)
	}
	var want []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>":
			want = append(want, filepath.Base(f[2]))
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			want = append(want, filepath.Base(f[0]))
		}
	}
	var gotBase []string
	for _, g := range got {
		gotBase = append(gotBase, filepath.Base(g))
	}
	slices.Sort(want)
	slices.Sort(gotBase)
	// The interpreter is both PT_INTERP of the executable and DT_NEEDED of
	// libc (under its multiarch path); the loader lists it once.
	gotBase = slices.Compact(gotBase)
	if !slices.Equal(want, gotBase) {
		t.Fatalf("header resolution %v\nloader            %v", gotBase, want)
	}
	if !slices.Contains(got, "/lib64/ld-linux-x86-64.so.2") {
		t.Fatalf("interpreter missing from %v", got)
	}
}

func TestMissingLibrary(t *testing.T) {
	_, err := Resolve([]string{"/usr/sbin/mke2fs"}, []string{"/nonexistent"})
	if err == nil || !strings.Contains(err.Error(), "needs lib") {
		t.Fatalf("want a 'needs lib…' error, got %v", err)
	}
}

func TestNotELF(t *testing.T) {
	if _, err := Resolve([]string{"/etc/hostname"}, DefaultLibDirs); err == nil {
		t.Fatal("a text file was accepted as an ELF executable")
	}
}
