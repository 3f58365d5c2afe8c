package main

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// packerBinary is the real Packer that `make packer` builds from the Go
// module proxy (tools/packer/go.mod pins v1.12.0).
func packerBinary(t *testing.T) string {
	if p := os.Getenv("BULWARK_PACKER"); p != "" {
		return p
	}
	p, _ := filepath.Abs("../out/tools/packer")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no Packer at %s: run `make packer` (make test does)", p)
	}
	return p
}

// TestPackerAcceptance installs the plugin into a real Packer, runs init,
// validate and build on the example template, boots the image it built
// under QEMU (UEFI) to ready, and checks that it is byte for byte the
// image the make path builds from the same tree, the system image of its
// packages included. Templates with bad values fail validate with the
// field named.
func TestPackerAcceptance(t *testing.T) {
	packer := packerBinary(t)
	work := t.TempDir()
	plugin := filepath.Join(work, "packer-plugin-bulwark")
	if out, err := exec.Command("go", "build", "-o", plugin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building the plugin: %v\n%s", err, out)
	}
	// Packer's own state (plugins, config) stays in the test's directory,
	// and it never calls home.
	env := append(os.Environ(), "HOME="+work, "PACKER_PLUGIN_PATH="+filepath.Join(work, "plugins"),
		"PACKER_CONFIG_DIR="+work, "CHECKPOINT_DISABLE=1", "PACKER_NO_COLOR=1")
	run := func(want bool, args ...string) string {
		t.Helper()
		cmd := exec.Command(packer, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if (err == nil) != want {
			t.Fatalf("packer %s: %v (want success %v)\n%s", strings.Join(args, " "), err, want, out)
		}
		return string(out)
	}
	t.Log(run(true, "version"))
	t.Log(run(true, "plugins", "install", "--path", plugin, "github.com/bulwarkvm/bulwark"))
	if out := run(true, "plugins", "installed"); !strings.Contains(out, "packer-plugin-bulwark_v0.1.0_x5.0_linux_amd64") {
		t.Fatalf("plugin not installed as v0.1.0:\n%s", out)
	}

	example, _ := filepath.Abs("example")
	run(true, "init", example)
	outDir := filepath.Join(work, "packer-out")
	run(true, "validate", "-var", "output_directory="+outDir, example)
	log := run(true, "build", "-var", "output_directory="+outDir, example)
	t.Logf("packer build:\n%s", log)
	if !strings.Contains(log, "bulwark image, kernel ") || !strings.Contains(log, "bulwark.img") {
		t.Fatal("the artifact does not list its files")
	}

	// Bad values fail validate, naming the field.
	for name, tc := range map[string]struct{ body, want string }{
		"disk size":  {`disk_size_mib = 10`, "disk_size_mib: 10 is out of range"},
		"format":     {`formats = ["vmdk"]`, `formats[0]: "vmdk" is not raw or qcow2`},
		"module":     {`extra_modules = ["nosuchmodule"]`, `extra_modules: kmod: kernel`},
		"tool":       {`extra_tools = ["relative/tool"]`, `extra_tools[0]: "relative/tool" is not an absolute path`},
		"cmdline":    {`cmdline_extra = "a\nb"`, "cmdline_extra: may not contain line breaks"},
		"unknown":    {`colour = "blue"`, `colour`},
		"source dir": {`source_dir = "/nonexistent"`, "source_dir: /nonexistent does not hold"},
		"package":    {`packages = ["postgresql-15", "-o Debug=1"]`, `packages[1]: deb: "-o Debug=1" is not a Debian package name`},
	} {
		dir := filepath.Join(work, "bad-"+strings.ReplaceAll(name, " ", "-"))
		os.MkdirAll(dir, 0o755)
		tmpl := `source "bulwark" "bad" {
  output_directory = "` + filepath.Join(dir, "out") + `"
  ` + tc.body + `
}
build { sources = ["source.bulwark.bad"] }
`
		os.WriteFile(filepath.Join(dir, "bad.pkr.hcl"), []byte(tmpl), 0o644)
		if out := run(false, "validate", dir); !strings.Contains(out, tc.want) {
			t.Errorf("%s: packer validate does not say %q:\n%s", name, tc.want, out)
		}
	}

	// The make path (make image runs go run ./image -out out -qcow2), from
	// the same tree, into another directory.
	makeOut := filepath.Join(work, "make-out")
	cmd := exec.Command("go", "run", "./image", "-out", makeOut, "-qcow2")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the make path: %v\n%s", err, out)
	}
	for _, f := range []string{"vmlinuz", "initramfs.img", "system.img", "cmdline", "bulwark.img", "bulwark.qcow2"} {
		a, b := digest(t, filepath.Join(outDir, f)), digest(t, filepath.Join(makeOut, f))
		if a != b {
			t.Errorf("%s differs: Packer %s, make %s", f, a, b)
		} else {
			t.Logf("%s identical by both paths: sha256:%s", f, a)
		}
	}

	// The Packer-built disk boots under UEFI to ready.
	img := harness.Image{Kernel: filepath.Join(outDir, "vmlinuz"), Initramfs: filepath.Join(outDir, "initramfs.img"),
		Disk: filepath.Join(outDir, "bulwark.img"), Cmdline: "console=ttyS0,115200 panic=-1 quiet"}
	vm := harness.Start(t, harness.Options{Name: "packer-built", Image: img, UEFI: true,
		Config: []byte(`{"version":1,"hostname":"packer-node"}`), ConfigVolume: true})
	vm.MustWaitFor(`^bulwark: ready$`, 5*time.Minute)
	if err := vm.PowerOff(time.Minute); err != nil {
		t.Fatal(err)
	}
}

func digest(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}
