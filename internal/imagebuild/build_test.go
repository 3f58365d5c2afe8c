package imagebuild

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReproducible builds the whole image twice into different directories
// and requires byte-identical initramfs, system image, disk and qcow2, and
// the same root hash; a system image of another package set has other
// bytes and another root hash.
func TestReproducible(t *testing.T) {
	src, err := FindSourceDir()
	if err != nil {
		t.Fatal(err)
	}
	var reps []*Report
	dirs := []string{t.TempDir(), t.TempDir()}
	for _, d := range dirs {
		rep, err := Build(context.Background(), Options{OutDir: d, SourceDir: src, Formats: []string{"raw", "qcow2"}})
		if err != nil {
			t.Fatal(err)
		}
		reps = append(reps, rep)
	}
	for _, f := range []string{"init", "backup", "initramfs.img", "system.img", "cmdline", "bulwark.img", "bulwark.qcow2", "vmlinuz"} {
		a, err := os.ReadFile(filepath.Join(dirs[0], f))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dirs[1], f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two builds of the same inputs", f)
		}
	}
	a, b := reps[0].SystemImage, reps[1].SystemImage
	if a == nil || b == nil {
		t.Fatal("the default build has no system image")
	}
	if a.RootHash != b.RootHash || a.Salt != b.Salt || a.HashOffset != b.HashOffset {
		t.Errorf("two builds: root hash %s and %s, salt %s and %s", a.RootHash, b.RootHash, a.Salt, b.Salt)
	}
	// Another package set: another image, another root hash.
	o := Options{Packages: []string{"postgresql-15"}, SourceDir: src, OutDir: t.TempDir()}
	if err := o.Prepare(); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(o.OutDir, SystemImageFile)
	si, _, err := o.buildSystemImage(context.Background(), other, filepath.Join(dirs[0], "backup"))
	if err != nil {
		t.Fatal(err)
	}
	if si.RootHash == a.RootHash {
		t.Error("postgresql-15 without pgaudit has the same root hash as with it")
	}
	if x, y := digestOf(t, other), digestOf(t, filepath.Join(dirs[0], SystemImageFile)); x == y {
		t.Error("postgresql-15 without pgaudit gave the same system image")
	}
	if reps[0].InitramfsCompressed > 10<<20 {
		t.Errorf("initramfs is %d bytes compressed; the goal is at most 10 MiB", reps[0].InitramfsCompressed)
	}
	var out bytes.Buffer
	reps[0].Format(&out)
	for _, part := range []string{"init", "modules", "tools", "initramfs", "system image", "root hash " + a.RootHash, "bulwark.img"} {
		if !strings.Contains(out.String(), part) {
			t.Errorf("build report lacks %s:\n%s", part, out.String())
		}
	}
}

// A changed input changes the output: the reproducibility check above can fail.
func TestCmdlineChangesDisk(t *testing.T) {
	src, err := FindSourceDir()
	if err != nil {
		t.Fatal(err)
	}
	var disks [][]byte
	for _, extra := range []string{"", "bulwark.test=1"} {
		d := t.TempDir()
		if _, err := Build(context.Background(), Options{OutDir: d, SourceDir: src, CmdlineExtra: extra, NoPackages: true}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(d, "bulwark.img"))
		if err != nil {
			t.Fatal(err)
		}
		disks = append(disks, b)
	}
	if bytes.Equal(disks[0], disks[1]) {
		t.Fatal("a different kernel command line gave the same disk")
	}
}

func TestBadOptions(t *testing.T) {
	cases := []struct {
		o    Options
		want string
	}{
		{Options{Formats: []string{"vmdk"}}, `output format "vmdk"`},
		{Options{KernelVersion: "0.0.0-none"}, "kernel 0.0.0-none is incomplete"},
		{Options{CmdlineExtra: "a\nb"}, "line breaks"},
		{Options{Packages: []string{"postgresql-15", "-o Debug::pkgProblemResolver=1"}}, `packages: deb: "-o Debug::pkgProblemResolver=1" is not a Debian package name`},
		{Options{Packages: []string{}}, "no packages for the system image"},
		{Options{CmdlineExtra: "quiet bulwark.usrhash=" + strings.Repeat("0", 64)}, "may not name bulwark.usrhash="},
		{Options{NoPackages: true, Packages: []string{"postgresql-15"}}, "packages given with NoPackages"},
	}
	for _, c := range cases {
		c.o.OutDir = t.TempDir()
		_, err := Build(context.Background(), c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.o, err, c.want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	if compareVersions("6.1.0-9-amd64", "6.1.0-56-amd64") >= 0 {
		t.Error("6.1.0-9 sorted after 6.1.0-56")
	}
	if compareVersions("6.10.0-1-amd64", "6.9.0-1-amd64") <= 0 {
		t.Error("6.10 sorted before 6.9")
	}
}

func digestOf(t *testing.T, p string) string {
	t.Helper()
	a, err := describe(p)
	if err != nil {
		t.Fatal(err)
	}
	return a.SHA256
}
