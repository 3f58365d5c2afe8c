package elfdeps

import (
	"errors"
	"os"
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

// mapTree is a tree whose files are host files under other names.
type mapTree map[string]string

func (m mapTree) Open(p string) (File, error) {
	h, ok := m[p]
	if !ok {
		return nil, os.ErrNotExist
	}
	return os.Open(h)
}

// TestResolveInAsksForMissing: in a tree that holds only the executable,
// every library and the interpreter are asked for once, by the name the
// loader would look for, and the result names them where the tree now has
// them.
func TestResolveInAsksForMissing(t *testing.T) {
	tree := mapTree{"/opt/bin/mke2fs": "/usr/sbin/mke2fs"}
	var asked []string
	missing := func(name string) error {
		asked = append(asked, name)
		if strings.HasPrefix(name, "/") { // the interpreter
			tree[name] = name
			return nil
		}
		for _, d := range DefaultLibDirs {
			if _, err := os.Stat(filepath.Join(d, name)); err == nil {
				tree["/usr/lib/x86_64-linux-gnu/"+name] = filepath.Join(d, name)
				return nil
			}
		}
		return errors.New("no such library on the host")
	}
	got, err := ResolveIn(tree, []string{"/opt/bin/mke2fs"}, []string{"/usr/lib/x86_64-linux-gnu"}, missing)
	if err != nil {
		t.Fatal(err)
	}
	host, err := Resolve([]string{"/usr/sbin/mke2fs"}, DefaultLibDirs)
	if err != nil {
		t.Fatal(err)
	}
	base := func(l []string) []string {
		var b []string
		for _, p := range l {
			b = append(b, filepath.Base(p))
		}
		slices.Sort(b)
		return slices.Compact(b)
	}
	if !slices.Equal(base(got), base(host)) {
		t.Fatalf("in the tree %v\non the host  %v", base(got), base(host))
	}
	if !slices.Contains(asked, "/lib64/ld-linux-x86-64.so.2") || !slices.Contains(asked, "libc.so.6") {
		t.Fatalf("asked for %v", asked)
	}
	for _, p := range got {
		if _, ok := tree[p]; !ok {
			t.Errorf("%s is not in the tree", p)
		}
	}
	// A library nobody provides ends the resolution, naming it.
	_, err = ResolveIn(mapTree{"/opt/bin/mke2fs": "/usr/sbin/mke2fs", "/lib64/ld-linux-x86-64.so.2": "/lib64/ld-linux-x86-64.so.2"},
		[]string{"/opt/bin/mke2fs"}, []string{"/nowhere"}, func(string) error { return errors.New("nobody has it") })
	if err == nil || !strings.Contains(err.Error(), "needs lib") || !strings.Contains(err.Error(), "nobody has it") {
		t.Fatalf("got %v", err)
	}
}
