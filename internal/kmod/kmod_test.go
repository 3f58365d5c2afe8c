package kmod

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestListRoundTrip(t *testing.T) {
	got, err := ParseList(FormatList(Modules))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, stripWhy(Modules)) {
		t.Fatalf("round trip changed the list")
	}
	if _, err := ParseList([]byte("ext4 maybe\n")); err == nil {
		t.Fatal("accepted a bad list line")
	}
	if !slices.ContainsFunc(got, func(m Module) bool { return m.Late }) {
		t.Fatal("no late module survived the round trip")
	}
	m, err := ParseList([]byte("a optional late\nb late background\nc\nd ondemand\ne background first\n"))
	if err != nil || !m[0].Optional || !m[0].Late || m[0].Background || !m[1].Late || m[1].Optional || !m[1].Background || m[2].Late || m[2].Background || !m[3].OnDemand || m[2].OnDemand || m[1].First || !m[4].First || !m[4].Background {
		t.Fatalf("flags: %+v %v", m, err)
	}
	early, onDemand, first, bg := Split(m)
	if len(early) != 2 || len(bg) != 1 || bg[0].Name != "b" || len(onDemand) != 1 || onDemand[0].Name != "d" || len(first) != 1 || first[0].Name != "e" {
		t.Fatalf("Split: %v %v %v %v", early, onDemand, first, bg)
	}
}

func stripWhy(m []Module) []Module {
	out := slices.Clone(m)
	for i := range out {
		out[i].Why = ""
	}
	return out
}

// fakeLoader is a Loader over a made-up modules.dep whose kernel calls
// are recorded; fail makes the named files fail as often as it says.
func fakeLoader(t *testing.T, dep, builtin string, fail map[string]int) (*Loader, func() []string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := NewLoader(dir)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []string
	l.insert = func(file string) error {
		mu.Lock()
		defer mu.Unlock()
		if fail[file] > 0 {
			fail[file]--
			return errors.New("refused")
		}
		order = append(order, file)
		return nil
	}
	return l, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(order)
	}
}

const testDep = `kernel/net/nft_ct.ko: kernel/net/nf_conntrack.ko kernel/net/nf_tables.ko kernel/lib/libcrc32c.ko
kernel/net/nf_conntrack.ko: kernel/lib/libcrc32c.ko
kernel/net/nf_tables.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/fs/ext4.ko.gz: kernel/fs/jbd2.ko.gz
kernel/fs/jbd2.ko.gz:
kernel/drivers/md/dm-crypt.ko:
`

// Each file loads once, after everything it needs, however many modules
// ask for it at the same time.
func TestLoaderOrder(t *testing.T) {
	for _, parallel := range []bool{true, false} {
		l, loaded := fakeLoader(t, testDep, "kernel/drivers/char/tpm/tpm_crb.ko\n", nil)
		failed := l.loadList([]Module{{Name: "nft_ct"}, {Name: "nf_tables"}, {Name: "dm-crypt"}, {Name: "ext4"}, {Name: "tpm_crb"}}, parallel)
		if len(failed) != 0 {
			t.Fatalf("parallel=%v: failed %v", parallel, failed)
		}
		order := loaded()
		pos := map[string]int{}
		for i, f := range order {
			if _, dup := pos[f]; dup {
				t.Fatalf("parallel=%v: %s loaded twice: %v", parallel, f, order)
			}
			pos[f] = i
		}
		if len(order) != 7 {
			t.Fatalf("parallel=%v: loaded %v, want 7 files (tpm_crb is built in)", parallel, order)
		}
		for file, deps := range l.deps {
			for _, d := range deps {
				if _, ok := pos[file]; ok && pos[d] > pos[file] {
					t.Errorf("parallel=%v: %s loaded before its dependency %s: %v", parallel, file, d, order)
				}
			}
		}
		// A second request loads nothing again.
		if failed := l.LoadList([]Module{{Name: "nft_ct"}}); len(failed) != 0 || len(loaded()) != 7 {
			t.Fatalf("parallel=%v: a second load: %v, %v", parallel, failed, loaded())
		}
	}
}

// A module that fails in the first pass is retried once in the second;
// one that fails twice is reported by name, with its dependents, and a
// later call tries it again.
func TestLoaderRetry(t *testing.T) {
	l, loaded := fakeLoader(t, testDep, "", map[string]int{"kernel/lib/libcrc32c.ko": 1})
	if failed := l.LoadList([]Module{{Name: "nf_conntrack"}, {Name: "crc32c_generic"}}); len(failed) != 0 {
		t.Fatalf("one failure is retried: %v", failed)
	}
	if got := loaded(); !slices.Contains(got, "kernel/net/nf_conntrack.ko") {
		t.Fatalf("loaded %v", got)
	}

	l, _ = fakeLoader(t, testDep, "", map[string]int{"kernel/lib/libcrc32c.ko": 2})
	failed := l.LoadList([]Module{{Name: "nf_tables"}, {Name: "dm_crypt"}})
	if len(failed) != 1 || failed["nf_tables"] == nil || !strings.Contains(failed["nf_tables"].Error(), "libcrc32c: refused") {
		t.Fatalf("want nf_tables failed through libcrc32c, got %v", failed)
	}
	if failed := l.LoadList([]Module{{Name: "nf_tables"}}); len(failed) != 0 {
		t.Fatalf("a later call does not retry: %v", failed)
	}
}

// Late modules load after all the others.
func TestLoaderLate(t *testing.T) {
	l, loaded := fakeLoader(t, testDep, "", nil)
	if failed := l.LoadList([]Module{{Name: "crc32c_generic", Late: true}, {Name: "nft_ct"}, {Name: "ext4"}}); len(failed) != 0 {
		t.Fatal(failed)
	}
	if got := loaded(); got[len(got)-1] != "kernel/crypto/crc32c_generic.ko" {
		t.Fatalf("late module not last: %v", got)
	}
}

func TestLoaderErrors(t *testing.T) {
	l, _ := fakeLoader(t, testDep+"kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\nkernel/c.ko: kernel/missing.ko\n", "", nil)
	failed := l.LoadList([]Module{{Name: "no_such"}, {Name: "a"}, {Name: "c"}})
	for name, want := range map[string]string{
		"no_such": `no module "no_such"`,
		"a":       "circular dependency",
		"c":       "needs kernel/missing.ko, which modules.dep does not list",
	} {
		if err := failed[name]; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: want an error with %q, got %v", name, want, err)
		}
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("kernel/a.ko kernel/b.ko\n"), 0o644)
	if _, err := NewLoader(dir); err == nil || !strings.Contains(err.Error(), "modules.dep line 1") {
		t.Errorf("a bad modules.dep line: %v", err)
	}
	if _, err := NewLoader(t.TempDir()); err == nil || !strings.Contains(err.Error(), "modules.dep") {
		t.Errorf("no modules.dep: %v", err)
	}
}

func TestModuleName(t *testing.T) {
	for file, want := range map[string]string{
		"kernel/drivers/md/dm-crypt.ko":          "dm_crypt",
		"kernel/fs/ext4/ext4.ko.gz":              "ext4",
		"kernel/arch/x86/crypto/crc32c-intel.ko": "crc32c_intel",
	} {
		if got := moduleName(file); got != want {
			t.Errorf("moduleName(%s) = %s, want %s", file, got, want)
		}
	}
}

func TestDecompress(t *testing.T) {
	want := bytes.Repeat([]byte("\x7fELF module "), 5000)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(want)
	zw.Close()
	got, err := decompress(gz.Bytes())
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("round trip: %v", err)
	}
	corrupt := slices.Clone(gz.Bytes())
	corrupt[len(corrupt)/2] ^= 0xff
	huge := slices.Clone(gz.Bytes())
	binary.LittleEndian.PutUint32(huge[len(huge)-4:], maxModule+1)
	short := slices.Clone(gz.Bytes())
	binary.LittleEndian.PutUint32(short[len(short)-4:], uint32(len(want)-1))
	for name, c := range map[string]struct {
		data []byte
		want string
	}{
		"truncated":    {gz.Bytes()[:10], "not a gzip file"},
		"not gzip":     {append(bytes.Repeat([]byte("x"), 36), 0, 0, 0, 0), "decompressing"},
		"corrupt":      {corrupt, "decompressing"},
		"claims a lot": {huge, "more than"},
		"claims less":  {short, "decompressing"},
	} {
		if _, err := decompress(c.data); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: want an error with %q, got %v", name, c.want, err)
		}
	}
}

// A deep graph loads side by side without sibling goroutines sharing the
// record of the path they came by (go test -race). The tree lists only
// direct dependencies, so that every level has files to claim.
func TestLoaderDeep(t *testing.T) {
	var dep strings.Builder
	const depth = 6
	for level := 0; level < depth; level++ {
		for n := 0; n < 1<<level; n++ {
			fmt.Fprintf(&dep, "kernel/m%d_%d.ko:", level, n)
			if level+1 < depth {
				fmt.Fprintf(&dep, " kernel/m%d_%d.ko kernel/m%d_%d.ko", level+1, 2*n, level+1, 2*n+1)
			}
			dep.WriteString("\n")
		}
	}
	l, loaded := fakeLoader(t, dep.String(), "", nil)
	if failed := l.LoadList([]Module{{Name: "m0_0"}}); len(failed) != 0 {
		t.Fatal(failed)
	}
	if got := loaded(); len(got) != 1<<depth-1 {
		t.Fatalf("loaded %d files, want %d", len(got), 1<<depth-1)
	}
}
