package resolve

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/kmod"
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

func TestFilesIncludesDependencies(t *testing.T) {
	kver := hostKernel(t)
	files, err := Files("/", kver, []string{"dm_crypt", "ext4", "aes_generic"})
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

func TestFilesWholeList(t *testing.T) {
	kver := hostKernel(t)
	files, err := Files("/", kver, kmod.Names(kmod.Modules))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < len(kmod.Modules)/2 {
		t.Fatalf("only %d files for %d modules", len(files), len(kmod.Modules))
	}
	dep, err := os.ReadFile(filepath.Join(ModuleDir("/", kver), "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	bg, err := BackgroundOnly("/", kver, kmod.Modules, files)
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
		if strings.Contains(string(filtered), f+":") || strings.Contains(string(filtered), f+" ") || !strings.Contains(string(filtered), f+kmod.CompressedSuffix+":") {
			t.Errorf("%s is not renamed everywhere in modules.dep", f)
		}
	}
	if !strings.Contains(string(filtered), "jbd2.ko"+kmod.CompressedSuffix) {
		t.Errorf("no compressed dependency in the filtered modules.dep")
	}
	noJBD2 := slices.DeleteFunc(slices.Clone(files), func(f string) bool { return strings.HasSuffix(f, "/jbd2.ko") })
	if _, err := FilterDep(dep, noJBD2, nil); err == nil || !strings.Contains(err.Error(), "jbd2.ko, which the image does not carry") {
		t.Errorf("a dependency the image lacks: %v", err)
	}
}

func TestFilesUnknown(t *testing.T) {
	_, err := Files("/", hostKernel(t), []string{"no_such_module_xyz"})
	if err == nil || !strings.Contains(err.Error(), "no_such_module_xyz") {
		t.Fatalf("want an error naming the module, got %v", err)
	}
}
