package kmod

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// hostKernel finds a kernel with modules on this machine (make deps installs
// Debian's linux-image-amd64).
func hostKernel(t *testing.T) string {
	t.Helper()
	deps, _ := filepath.Glob("/lib/modules/*/modules.dep")
	if len(deps) == 0 {
		t.Fatal("no /lib/modules/*/modules.dep: run make deps (installs linux-image-amd64)")
	}
	return filepath.Base(filepath.Dir(deps[len(deps)-1]))
}

func TestResolveIncludesDependencies(t *testing.T) {
	kver := hostKernel(t)
	files, err := Resolve("/", kver, []string{"dm_crypt", "ext4", "aes_generic"})
	if err != nil {
		t.Fatal(err)
	}
	has := func(suffix string) bool {
		return slices.ContainsFunc(files, func(f string) bool { return strings.HasSuffix(f, suffix) })
	}
	for _, want := range []string{"/dm-crypt.ko", "/dm-mod.ko", "/ext4.ko", "/jbd2.ko", "/mbcache.ko"} {
		if !has(want) {
			t.Errorf("resolution of dm_crypt+ext4 lacks %s: %v", want, files)
		}
	}
	// aes_generic is built into Debian's kernel: no file.
	if has("aes_generic.ko") {
		t.Errorf("built-in module resolved to a file: %v", files)
	}
}

func TestResolveWholeList(t *testing.T) {
	kver := hostKernel(t)
	files, err := Resolve("/", kver, Names(Modules))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < len(Modules)/2 {
		t.Fatalf("only %d files for %d modules", len(files), len(Modules))
	}
	dep, err := os.ReadFile(filepath.Join(ModuleDir("/", kver), "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	bg, err := BackgroundOnly("/", kver, Modules, files)
	if err != nil {
		t.Fatal(err)
	}
	// ext4 serves only the volumes; nf_tables the firewall, before ready.
	if !slices.ContainsFunc(bg, func(f string) bool { return strings.HasSuffix(f, "/ext4.ko") }) ||
		slices.ContainsFunc(bg, func(f string) bool { return strings.HasSuffix(f, "/nf_tables.ko") }) {
		t.Fatalf("background-only files: %v", bg)
	}
	filtered, err := FilterDep(dep, files, bg)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(filtered)), "\n")
	if len(lines) != len(files) {
		t.Fatalf("filtered modules.dep has %d lines for %d files", len(lines), len(files))
	}
	// Every compressed file is named so, as a module and as a dependency
	// (jbd2 is both: ext4 needs it).
	for _, f := range bg {
		if strings.Contains(string(filtered), f+":") || strings.Contains(string(filtered), f+" ") || !strings.Contains(string(filtered), f+CompressedSuffix+":") {
			t.Errorf("%s is not renamed everywhere in modules.dep", f)
		}
	}
	if !strings.Contains(string(filtered), "jbd2.ko"+CompressedSuffix) {
		t.Errorf("no compressed dependency in the filtered modules.dep")
	}
	noJBD2 := slices.DeleteFunc(slices.Clone(files), func(f string) bool { return strings.HasSuffix(f, "/jbd2.ko") })
	if _, err := FilterDep(dep, noJBD2, nil); err == nil || !strings.Contains(err.Error(), "jbd2.ko, which the image does not carry") {
		t.Errorf("a dependency the image lacks: %v", err)
	}
}

func TestResolveUnknown(t *testing.T) {
	_, err := Resolve("/", hostKernel(t), []string{"no_such_module_xyz"})
	if err == nil || !strings.Contains(err.Error(), "no_such_module_xyz") {
		t.Fatalf("want an error naming the module, got %v", err)
	}
}

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
	m, err := ParseList([]byte("a optional late\nb late background\nc\nd ondemand\n"))
	if err != nil || !m[0].Optional || !m[0].Late || m[0].Background || !m[1].Late || m[1].Optional || !m[1].Background || m[2].Late || m[2].Background || !m[3].OnDemand || m[2].OnDemand {
		t.Fatalf("flags: %+v %v", m, err)
	}
	early, onDemand, bg := Split(m)
	if len(early) != 2 || len(bg) != 1 || bg[0].Name != "b" || len(onDemand) != 1 || onDemand[0].Name != "d" {
		t.Fatalf("Split: %v %v %v", early, onDemand, bg)
	}
}

func stripWhy(m []Module) []Module {
	out := slices.Clone(m)
	for i := range out {
		out[i].Why = ""
	}
	return out
}
