package deb

import (
	"archive/tar"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// makeDeb builds a small package with dpkg-deb, compressed with comp.
func makeDeb(t *testing.T, comp string) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for p, content := range map[string]string{
		"DEBIAN/control": "Package: bwtest\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: x <x@example.org>\nDescription: test\n",
		"DEBIAN/shlibs":  "libbwtest 3 bwtest (>= 1.0)\nudeb: libbwtest 3 bwtest-udeb\n",
		"DEBIAN/symbols": "libbwtest.so.3 bwtest #MINVER#\n* Build-Depends-Package: libbwtest-dev\n bwtest_init@Base 1.0\n",
		"DEBIAN/md5sums": "d41d8cd98f00b204e9800998ecf8427e  usr/lib/x86_64-linux-gnu/libbwtest.so.3.1\n",
		"usr/lib/x86_64-linux-gnu/libbwtest.so.3.1": "",
		"usr/share/doc/bwtest/copyright":            "free\n",
	} {
		f := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(f), 0o755)
		if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("libbwtest.so.3.1", filepath.Join(root, "usr/lib/x86_64-linux-gnu/libbwtest.so.3")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "bwtest.deb")
	if b, err := exec.Command("dpkg-deb", "--root-owner-group", "-Z"+comp, "--build", root, out).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, b)
	}
	return out
}

func TestReadDeb(t *testing.T) {
	for _, comp := range []string{"xz", "zstd", "gzip", "none"} {
		t.Run(comp, func(t *testing.T) {
			p, err := Open(makeDeb(t, comp))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			ctl, err := p.Control()
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(ctl["control"]), "Package: bwtest") {
				t.Fatalf("control: %q", ctl["control"])
			}
			if got := Sonames(ctl); !slices.Contains(got, "libbwtest.so.3") {
				t.Errorf("sonames %q lack libbwtest.so.3", got)
			}
			if got := Files(ctl); len(got) != 1 || got[0] != "/usr/lib/x86_64-linux-gnu/libbwtest.so.3.1" {
				t.Errorf("files %q", got)
			}
			var names []string
			err = p.Data(func(h *tar.Header, r io.Reader) error {
				names = append(names, h.Name)
				if h.Typeflag == tar.TypeSymlink && h.Linkname != "libbwtest.so.3.1" {
					t.Errorf("symlink %s -> %s", h.Name, h.Linkname)
				}
				if strings.HasSuffix(h.Name, "copyright") {
					b, _ := io.ReadAll(r)
					if string(b) != "free\n" {
						t.Errorf("copyright: %q", b)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(names, "./usr/lib/x86_64-linux-gnu/libbwtest.so.3") {
				t.Errorf("data entries: %q", names)
			}
		})
	}
}

func TestNotADeb(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.deb")
	os.WriteFile(p, []byte("!<arch>\nnonsense"), 0o644)
	if _, err := Open(p); err == nil {
		t.Fatal("a truncated ar archive opened")
	}
	os.WriteFile(p, []byte("PK\x03\x04"), 0o644)
	if _, err := Open(p); err == nil || !strings.Contains(err.Error(), "not an ar archive") {
		t.Fatalf("a zip file: %v", err)
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"postgresql-15", "postgresql-15-pgaudit", "libc6=2.36-9+deb12u14", "timescaledb-2-postgresql-15=2.14.2~debian12", "g++"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-o", "Postgres", "a b", "x;rm", "pkg=", "../x.deb"} {
		if err := CheckName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestFields(t *testing.T) {
	f := fields("Package: a\nDepends: b,\n c\nSize: 12\n")
	if f["Package"] != "a" || f["Depends"] != "b,\n c" || f["Size"] != "12" {
		t.Fatalf("%q", f)
	}
}
