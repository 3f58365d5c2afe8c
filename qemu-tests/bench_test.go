package qemutests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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

// BenchmarkVolumeFormatMap runs, inside the test image, our header write
// plus dm-crypt mapping of a 1 GiB disk against cryptsetup luksFormat
// --pbkdf pbkdf2 plus open with the same parameters, alternating in the
// same boot, and mke2fs on the mapped volume (internal/volume's
// BenchmarkGuestFormatMap). The guest's own metrics are reported here.
func BenchmarkVolumeFormatMap(b *testing.B) {
	img := testImage(b)
	img.Cmdline += fmt.Sprintf(" rdinit=%s/guesttest bulwark.testargs=-test.run=NONE,-test.bench=GuestFormatMap,-test.benchtime=%dx", testBin, max(b.N, 3))
	dir := b.TempDir()
	vm := harness.Start(b, harness.Options{Name: "bench-volume", Image: img, Disks: []string{newDisk(b, dir, "d0", 1<<30+16<<20)}})
	l := vm.MustWaitFor(`^BenchmarkGuestFormatMap-[0-9]+\s+[0-9]+`, 10*time.Minute)
	vm.MustWaitFor(`^guesttest: PASS volume.test$`, time.Minute)
	f := strings.Fields(l.Text)
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil || f[i+1] == "ns/op" {
			continue
		}
		b.ReportMetric(v, f[i+1])
	}
	b.Log(l.Text)
}

// BenchmarkBootWithVolumes measures QEMU start to "bulwark: ready" for a
// node with two 1 GiB data volumes against the same node without volumes
// (and without the disks), boots alternating in the same run.
func BenchmarkBootWithVolumes(b *testing.B) {
	img := image(b)
	plain := []byte(`{"version":1,"hostname":"bench"}`)
	vols := []byte(`{"version":1,"hostname":"bench","volumes":[
		{"name":"data","serial":"data0","mount":"/var/lib/data"},
		{"name":"wal","serial":"data1","mount":"/var/lib/wal"}]}`)
	var with, without, initWith, initWithout time.Duration
	for i := 0; i < b.N; i++ {
		vm := harness.Start(b, harness.Options{Name: "no-volumes", Image: img, Config: plain})
		initWithout += vm.MustWaitFor(`^bulwark: starting`, bootTimeout).At
		without += vm.MustWaitFor(`^bulwark: ready$`, bootTimeout).At
		if err := vm.PowerOff(offTimeout); err != nil {
			b.Fatal(err)
		}
		dir := b.TempDir()
		disks := []string{newDisk(b, dir, "d0", 1<<30), newDisk(b, dir, "d1", 1<<30)}
		vm = harness.Start(b, harness.Options{Name: "two-volumes", Image: img, Config: vols, Disks: disks})
		initWith += vm.MustWaitFor(`^bulwark: starting`, bootTimeout).At
		with += vm.MustWaitFor(`^bulwark: ready$`, bootTimeout).At
		for _, l := range vm.Lines() {
			if strings.Contains(l.Text, "bulwark:   volume ") {
				b.Log(l.Text)
			}
		}
		if err := vm.PowerOff(offTimeout); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N)
	b.ReportMetric(with.Seconds()/n, "s-to-ready-2x1GiB")
	b.ReportMetric(without.Seconds()/n, "s-to-ready-none")
	b.ReportMetric((with-without).Seconds()/n, "s-added")
	// Of the added time, this much passes before the init starts: the
	// firmware and kernel bringing up two more disks.
	b.ReportMetric((initWith-initWithout).Seconds()/n, "s-added-before-init")
	b.ReportMetric(with.Seconds()/without.Seconds(), "ratio")
}
