package qemutests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/imagebuild"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// testBin is where the test image keeps its test programs.
const testBin = "/usr/libexec/bulwark-tests"

var (
	testImageOnce sync.Once
	testImg       harness.Image
	testImgErr    error
)

// testImage is the production image plus test programs. Its initramfs
// has the real cryptsetup with its libraries, the guest test runner
// (booted with rdinit=, in place of the init) and the guest-tagged test
// binaries; its init is the production init with the test hooks
// (-tags bulwarktest). Its system image holds the test workloads
// (markerwriter, netprobe, stubborn) and no Debian packages: a node runs
// its workload only from the verified system image, and the test image's
// nodes are production nodes in that. Built once per test process.
func testImage(t testing.TB) harness.Image {
	t.Helper()
	testImageOnce.Do(func() { testImg, testImgErr = buildTestImage(image(t)) })
	if testImgErr != nil {
		t.Fatal(testImgErr)
	}
	return testImg
}

func buildTestImage(base harness.Image) (harness.Image, error) {
	dir, err := os.MkdirTemp("", "bulwark-testimage-")
	if err != nil {
		return harness.Image{}, err
	}
	harness.RemoveOnExit(dir)
	bins := filepath.Join(dir, "bin")
	extra := map[string]string{}  // into the initramfs
	system := map[string]string{} // into the system image
	build := func(name string, args ...string) error {
		out := filepath.Join(bins, name)
		cmd := exec.Command("go", append(append([]string{}, args[:len(args)-1]...), "-trimpath", "-o", out, args[len(args)-1])...)
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return &buildError{name, err, string(b)}
		}
		switch name {
		case "markerwriter", "netprobe", "stubborn":
			system[testBin+"/"+name] = out
		case "backup":
			// Options.BackupBinary: the build puts it on the system image.
		default:
			extra[testBin+"/"+name] = out
		}
		return nil
	}
	for _, b := range [][]string{
		{"guesttest", "build", "./qemu-tests/testdata/guesttest"},
		{"markerwriter", "build", "./qemu-tests/testdata/markerwriter"},
		{"netprobe", "build", "./qemu-tests/testdata/netprobe"},
		{"stubborn", "build", "./qemu-tests/testdata/stubborn"},
		{"volume.test", "test", "-c", "-tags", "guest", "./internal/volume"},
		{"ipsec.test", "test", "-c", "-tags", "guest", "./internal/ipsec"},
		// The init and the backup service with their test hooks
		// (TestServiceIsolation, TestBackup); the production image's
		// have none.
		{"init", "build", "-tags", "bulwarktest", "./init"},
		{"backup", "build", "-tags", "bulwarktest", imagebuild.BackupPackage},
	} {
		if err := build(b[0], b[1:]...); err != nil {
			return harness.Image{}, err
		}
	}
	src, err := filepath.Abs("..")
	if err != nil {
		return harness.Image{}, err
	}
	out := filepath.Join(dir, "out")
	rep, err := imagebuild.Build(context.Background(), imagebuild.Options{
		OutDir:       out,
		SourceDir:    src,
		ExtraTools:   []string{"/usr/sbin/cryptsetup", "/usr/sbin/ip"},
		ExtraFiles:   extraWithout(extra, testBin+"/init"),
		InitBinary:   extra[testBin+"/init"],
		BackupBinary: filepath.Join(bins, "backup"),
		SkipDisk:     true,
		NoPackages:   true,
		SystemFiles:  system,
	})
	if err != nil {
		return harness.Image{}, err
	}
	img := base
	img.Kernel = filepath.Join(out, "vmlinuz")
	img.Initramfs = filepath.Join(out, "initramfs.img")
	img.System = filepath.Join(out, imagebuild.SystemImageFile)
	img.Cmdline = rep.Cmdline
	img.Disk = ""
	return img, nil
}

// extraWithout is m less key.
func extraWithout(m map[string]string, key string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if k != key {
			out[k] = v
		}
	}
	return out
}

type buildError struct {
	name string
	err  error
	out  string
}

func (e *buildError) Error() string {
	return "building " + e.name + ": " + e.err.Error() + "\n" + e.out
}

// newDisk makes a sparse raw disk file of size bytes in the test's
// directory.
func newDisk(t testing.TB, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}
