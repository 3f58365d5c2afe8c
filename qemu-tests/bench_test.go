package qemutests

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/initramfs"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// BenchmarkBootOverhead measures, in one run and on the same kernel, the
// time from QEMU's start to "bulwark: ready" and to a trivial init's first
// line; the difference is what bulwark's init costs (goal ≤ 1 s). Boots
// alternate so that machine load affects both alike.
func BenchmarkBootOverhead(b *testing.B) {
	img := image(b)
	trivial := trivialImage(b, img)
	cfg := []byte(`{"version":1,"hostname":"bench"}`)
	var ours, base time.Duration
	for i := 0; i < b.N; i++ {
		vm := harness.Start(b, harness.Options{Name: "trivial", Image: trivial})
		l := vm.MustWaitFor(`^trivial: up$`, bootTimeout)
		base += l.At
		if err := vm.WaitExit(offTimeout); err != nil {
			b.Fatal(err)
		}

		vm = harness.Start(b, harness.Options{Name: "bulwark", Image: img, Config: cfg})
		l = vm.MustWaitFor(`^bulwark: ready$`, bootTimeout)
		ours += l.At
		if err := vm.PowerOff(offTimeout); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N)
	b.ReportMetric(ours.Seconds()/n, "s-to-ready")
	b.ReportMetric(base.Seconds()/n, "s-to-trivial")
	b.ReportMetric((ours-base).Seconds()/n, "s-overhead")
	b.ReportMetric(ours.Seconds()/base.Seconds(), "ratio")
}

// trivialImage packs the trivial init alone (plus /dev/console) with the
// same kernel and command line.
func trivialImage(b *testing.B, img harness.Image) harness.Image {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "init")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./testdata/trivialinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("building the trivial init: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		b.Fatal(err)
	}
	a := initramfs.New()
	if err := a.AddFile("/init", data, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := a.AddCharDev("/dev/console", 0o600, 5, 1); err != nil {
		b.Fatal(err)
	}
	t := img
	t.Initramfs = filepath.Join(dir, "initramfs.img")
	if _, err := a.WriteFile(t.Initramfs); err != nil {
		b.Fatal(err)
	}
	return t
}
