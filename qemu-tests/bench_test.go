package qemutests

import (
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/initramfs"
	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// BenchmarkBootOverhead measures, in one run and on the same kernel, the
// time from QEMU's start to "bulwark: ready" and to a trivial init's first
// line; the difference is what bulwark's init costs (goal ≤ 1 s). Boots
// alternate in pairs so that machine load affects both alike, and every
// other pair boots bulwark first, so that a drift in the machine's speed
// favours neither. This machine's speed drifts by ±10% over minutes, which
// moves a 5 s boot by more than the init's whole cost, so besides the mean
// it reports the mean's standard error and the median of the pairs'
// differences, which one slow pair cannot move; each pair is logged.
func BenchmarkBootOverhead(b *testing.B) {
	img := image(b)
	trivial := trivialImage(b, img)
	var ours, base time.Duration
	var diffs []float64
	for i := 0; i < b.N; i++ {
		var t0, t1 time.Duration
		if i%2 == 0 {
			t0 = bootTrivial(b, trivial)
			t1 = bootReady(b, "bulwark", img)
		} else {
			t1 = bootReady(b, "bulwark", img)
			t0 = bootTrivial(b, trivial)
		}
		base += t0
		ours += t1
		diffs = append(diffs, (t1 - t0).Seconds())
		b.Logf("pair %d: trivial %.3f s, ready %.3f s, overhead %.3f s", i+1, t0.Seconds(), t1.Seconds(), (t1 - t0).Seconds())
	}
	n := float64(b.N)
	b.ReportMetric(ours.Seconds()/n, "s-to-ready")
	b.ReportMetric(base.Seconds()/n, "s-to-trivial")
	b.ReportMetric((ours-base).Seconds()/n, "s-overhead")
	b.ReportMetric(stdErr(diffs), "s-overhead-stderr")
	b.ReportMetric(median(diffs), "s-overhead-median")
	b.ReportMetric(ours.Seconds()/base.Seconds(), "ratio")
}

// BenchmarkCompareImages measures the init overhead of several images in
// one run, to compare a change against the image before it: each round
// boots the trivial init once and then every image, so that all of them
// share the round's machine speed; every other round takes the images in
// reverse order, so that none is always the last. The images are output
// directories of `go run ./image`, named in BULWARK_BENCH_IMAGES
// (space-separated); `make bench-boot-compare IMAGES="/tmp/before out"`
// runs it.
func BenchmarkCompareImages(b *testing.B) {
	dirs := strings.Fields(os.Getenv("BULWARK_BENCH_IMAGES"))
	if len(dirs) < 2 {
		b.Fatal(`BULWARK_BENCH_IMAGES must name at least two image directories: make bench-boot-compare IMAGES="dirA dirB"`)
	}
	var imgs []harness.Image
	for _, d := range dirs {
		img, err := harness.ImageFromDir(d)
		if err != nil {
			b.Fatalf("%s: %v", d, err)
		}
		imgs = append(imgs, img)
	}
	trivial := trivialImage(b, imgs[0])
	diffs := make([][]float64, len(imgs))
	for i := 0; i < b.N; i++ {
		t0 := bootTrivial(b, trivial)
		line := fmt.Sprintf("round %d: trivial %.3f s; overhead", i+1, t0.Seconds())
		for k := range imgs {
			j := k
			if i%2 == 1 {
				j = len(imgs) - 1 - k
			}
			t1 := bootReady(b, fmt.Sprintf("image-%d", j+1), imgs[j])
			diffs[j] = append(diffs[j], (t1 - t0).Seconds())
			line += fmt.Sprintf(" %d: %.3f s", j+1, (t1 - t0).Seconds())
		}
		b.Log(line)
	}
	for j, d := range dirs {
		b.Logf("image %d is %s: overhead mean %.3f s (standard error %.3f s), median %.3f s", j+1, d, mean(diffs[j]), stdErr(diffs[j]), median(diffs[j]))
		b.ReportMetric(mean(diffs[j]), fmt.Sprintf("s-overhead-%d", j+1))
		b.ReportMetric(median(diffs[j]), fmt.Sprintf("s-overhead-median-%d", j+1))
	}
}

// benchConfig is the overhead benchmarks' node: config from fw_cfg, no
// NIC, no volumes, no IPsec.
var benchConfig = []byte(`{"version":1,"hostname":"bench"}`)

// bootTrivial boots the trivial init and returns when its line arrived,
// counted from QEMU's start; the VM has powered itself off.
func bootTrivial(b *testing.B, trivial harness.Image) time.Duration {
	vm := harness.Start(b, harness.Options{Name: "trivial", Image: trivial})
	t := vm.MustWaitFor(`^trivial: up$`, bootTimeout).At
	if err := vm.WaitExit(offTimeout); err != nil {
		b.Fatal(err)
	}
	return t
}

// bootReady boots img as the benchmark's node and returns when "bulwark:
// ready" arrived, counted from QEMU's start; the node is then powered off.
func bootReady(b *testing.B, name string, img harness.Image) time.Duration {
	vm := harness.Start(b, harness.Options{Name: name, Image: img, Config: benchConfig})
	t := vm.MustWaitFor(`^bulwark: ready$`, bootTimeout).At
	if err := vm.PowerOff(offTimeout); err != nil {
		b.Fatal(err)
	}
	return t
}

// mean of a non-empty list.
func mean(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// stdErr is the standard error of the mean of v: the sample standard
// deviation over the square root of the count; 0 for fewer than two values.
func stdErr(v []float64) float64 {
	if len(v) < 2 {
		return 0
	}
	m, ss := mean(v), 0.0
	for _, x := range v {
		ss += (x - m) * (x - m)
	}
	return math.Sqrt(ss/float64(len(v)-1)) / math.Sqrt(float64(len(v)))
}

// median of a non-empty list.
func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
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
	vm := harness.Start(b, harness.Options{Name: "bench-volume", Image: img, NoSystemDisk: true, Disks: []string{newDisk(b, dir, "d0", 1<<30+16<<20)}})
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
	plain := benchConfig
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

// BenchmarkIPsec: two nodes keyed with each other; how long after the
// later node is ready the SAs are in, how long a key generation takes
// (first and forced rekeys, from the initiator's log), and the throughput
// of a TCP stream between the nodes over ESP, against a plaintext stream
// between two test clients on the same bridge (informational: the nodes
// run under software emulation, the clients do not).
func BenchmarkIPsec(b *testing.B) {
	img := testImage(b)
	ctlBin := buildCtl(b)
	dir := b.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "ca"), "acme", "")
	if err != nil {
		b.Fatal(err)
	}
	robot, _ := ca.IssueClient("robot", pki.RoleControlPlane, "", 0)
	os.WriteFile(filepath.Join(dir, "robot.pem"), robot.CertPEM, 0o644)
	os.WriteFile(filepath.Join(dir, "robot.key"), robot.KeyPEM, 0o600)
	n := harness.NewNet(b)
	ops := n.AddClient("10.99.0.5/24")
	cfg1 := ipsecNode(b, ca, "db-1", "10.99.0.10", [][2]string{{"db-2", "10.99.0.11"}},
		[]string{"-stream", "10.99.0.11:5433", "-pause", "0", "-seconds", "20", "-marker", "x"})
	cfg2 := ipsecNode(b, ca, "db-2", "10.99.0.11", [][2]string{{"db-1", "10.99.0.10"}}, []string{"-sink", ":5433"})
	vm1 := harness.Start(b, harness.Options{Name: "db-1", Image: img, Config: cfg1, Net: n})
	vm2 := harness.Start(b, harness.Options{Name: "db-2", Image: img, Config: cfg2, Net: n})
	r1 := vm1.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	vm2.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	sa := vm1.MustWaitFor(`^bulwark: keying: ipsec: SAs installed peer=db-2 gen=1 `, time.Minute)
	b.ReportMetric(max(0, (sa.At-r1.At).Seconds()), "s-ready-to-SAs-db-1")
	took := regexp.MustCompile(`took=([0-9.]+m?s)`)
	dur := func(l harness.Line) time.Duration {
		m := took.FindStringSubmatch(l.Text)
		if m == nil {
			b.Fatalf("no took= in %q", l.Text)
		}
		d, _ := time.ParseDuration(m[1])
		return d
	}
	b.ReportMetric(dur(sa).Seconds(), "s-first-generation")
	st := vm1.MustWaitFor(`^bulwark: workload: netprobe: stream to .* MiB/s$`, 3*time.Minute)
	mibs := regexp.MustCompile(`([0-9.]+) MiB/s`).FindStringSubmatch(st.Text)[1]
	var esp float64
	fmt.Sscan(mibs, &esp)
	b.ReportMetric(esp, "MiB/s-esp-between-nodes")
	var total time.Duration
	const rekeys = 10
	for i := 2; i < 2+rekeys; i++ {
		if out, code := (operator{t: b, from: ops, bin: ctlBin, dir: dir, caFile: filepath.Join(dir, "ca", "ca.pem")}).run("robot", "ipsec", "rekey"); code != 0 {
			b.Fatalf("rekey: exit %d\n%s", code, out)
		}
		total += dur(vm1.MustWaitFor(fmt.Sprintf(`^bulwark: keying: ipsec: SAs installed peer=db-2 gen=%d `, i), time.Minute))
	}
	b.ReportMetric(total.Seconds()/rekeys, "s-rekey")

	// Plaintext baseline between two test clients.
	c1 := n.AddClient("10.99.0.21/24")
	c2 := n.AddClient("10.99.0.22/24")
	ln, err := c2.Listen("tcp", "10.99.0.22:6000")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	var sent int64
	t0 := time.Now()
	err = c1.Do(func() error {
		c, err := net.Dial("tcp", "10.99.0.22:6000")
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 4096)
		for time.Since(t0) < 5*time.Second {
			n, err := c.Write(buf)
			sent += int64(n)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(sent)/(1<<20)/time.Since(t0).Seconds(), "MiB/s-plaintext-clients")
}
