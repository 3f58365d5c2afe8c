package qemutests

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// The interop proofs run inside the guest, in the test image booted with
// the guest test runner instead of the production init: our header and
// table against the real cryptsetup, both ways, and Setup/Erase end to end.
func TestGuestVolumeInterop(t *testing.T) {
	img := testImage(t)
	img.Cmdline += " rdinit=" + testBin + "/guesttest bulwark.testargs=-test.run=Guest"
	dir := t.TempDir()
	vm := harness.Start(t, harness.Options{
		Name:  "guest-interop",
		Image: img,
		// The guest runner maps no system image.
		NoSystemDisk: true,
		Disks:        []string{newDisk(t, dir, "d0", 64<<20), newDisk(t, dir, "d1", 64<<20)},
	})
	vm.MustWaitFor(`^guesttest: done$`, 5*time.Minute)
	vm.WaitExit(time.Minute)
	console := vm.Console()
	for _, l := range vm.Lines() {
		if strings.Contains(l.Text, "--- ") || strings.Contains(l.Text, "guest_test.go") || strings.HasPrefix(l.Text, "guesttest:") {
			t.Log(l.Text)
		}
	}
	for _, want := range []string{
		"--- PASS: TestGuestOursOpenedByCryptsetup/4096",
		"--- PASS: TestGuestOursOpenedByCryptsetup/512",
		"--- PASS: TestGuestCryptsetupOpenedByOurs/4096",
		"--- PASS: TestGuestCryptsetupOpenedByOurs/512",
		"--- PASS: TestGuestSetupAndErase",
		"guesttest: PASS volume.test",
		"--- PASS: TestGuestXfrmState",
		"--- PASS: TestGuestInstallStateMatchesLibrary",
		"--- PASS: TestGuestXFRMChecks",
		"guesttest: PASS ipsec.test",
	} {
		if !strings.Contains(console, want) {
			t.Errorf("missing %q", want)
		}
	}
	if strings.Contains(console, "guesttest: FAIL") || t.Failed() {
		t.Fatalf("guest tests failed:\n%s", console)
	}
}

var uuidLine = regexp.MustCompile(`UUID:\s+([0-9a-f-]{36})`)

// luksDump runs cryptsetup luksDump on a disk file and checks what the
// volume promise says it must show; it returns the UUID.
func luksDump(t *testing.T, disk string) string {
	t.Helper()
	out, err := exec.Command("cryptsetup", "luksDump", disk).CombinedOutput()
	if err != nil {
		t.Fatalf("cryptsetup luksDump %s: %v\n%s", disk, err, out)
	}
	dump := string(out)
	for _, want := range []string{"Version:       \t2", "cipher: aes-xts-plain64", "Key:        512 bits", "Hash:       sha256", "PBKDF:      pbkdf2", "sector: 4096 [bytes]"} {
		if !strings.Contains(dump, want) {
			t.Errorf("%s: luksDump lacks %q:\n%s", disk, want, dump)
		}
	}
	m := uuidLine.FindStringSubmatch(dump)
	if m == nil {
		t.Fatalf("%s: no UUID in luksDump:\n%s", disk, dump)
	}
	return m[1]
}

// containsMarker scans a file for the marker.
func containsMarker(t *testing.T, path string, marker []byte) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(b, marker)
}

// assertErased checks that a disk holds no LUKS header: cryptsetup isLuks
// fails and neither magic appears in the first 16 MiB.
func assertErased(t *testing.T, disk string) {
	t.Helper()
	if err := exec.Command("cryptsetup", "isLuks", disk).Run(); err == nil {
		t.Errorf("%s: cryptsetup isLuks succeeds after shutdown", disk)
	}
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 16<<20)
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	for _, magic := range [][]byte{[]byte("LUKS\xba\xbe"), []byte("SKUL\xba\xbe"), []byte(`"keyslots"`)} {
		if i := bytes.Index(head, magic); i >= 0 {
			t.Errorf("%s: %q found at offset %d after the erase", disk, magic, i)
		}
	}
}

// A node with two data disks: encrypted as promised, no plaintext on disk,
// a fresh key and UUID every boot, crypto-erased on shutdown. Three boots
// of the same disks: a normal one that is then killed (headers stay), one
// that finds those headers, replaces them and shuts down cleanly, and one
// that finds the erased disks.
func TestVolumes(t *testing.T) {
	img := testImage(t)
	dir := t.TempDir()
	disks := []string{newDisk(t, dir, "d0", 64<<20), newDisk(t, dir, "d1", 64<<20)}
	mark := make([]byte, 12)
	rand.Read(mark)
	marker := "BULWARK-MARKER-" + hex.EncodeToString(mark) + "-"
	cfg := fmt.Sprintf(`{"version": 1, "hostname": "vol-test",
		"volumes": [
			{"name": "data", "serial": "data0", "mount": "/var/lib/data"},
			{"name": "wal", "by_id": "virtio-data1", "mount": "/var/lib/wal"}
		],
		"workload": {"command": ["%s/markerwriter", "8", "%s", "/var/lib/data/marker", "/var/lib/wal/marker"], "uid": 999, "gid": 999}}`,
		testBin, marker)

	// The scan can find the marker: a control file with it in plain text.
	control := newDisk(t, dir, "control", 1<<20)
	os.WriteFile(control, []byte("xx"+marker+"yy"), 0o600)
	if !containsMarker(t, control, []byte(marker)) {
		t.Fatal("the marker scan cannot find a plaintext marker")
	}

	boot := func(name string) *harness.VM {
		vm := harness.Start(t, harness.Options{Name: name, Image: img, Config: []byte(cfg), Disks: disks})
		vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
		vm.MustWaitFor(`^bulwark: workload: wrote 8 MiB of marker to /var/lib/wal/marker as uid 999$`, time.Minute)
		return vm
	}
	check := func(vm *harness.VM, prev map[string]string) map[string]string {
		uuids := map[string]string{}
		for i, d := range disks {
			u := luksDump(t, d)
			if containsMarker(t, d, []byte(marker)) {
				t.Errorf("disk %d holds the marker in plain text", i)
			}
			for _, p := range prev {
				if p == u {
					t.Errorf("disk %d reuses UUID %s from the previous boot", i, u)
				}
			}
			uuids[d] = u
			// The console reports the same UUID with cipher, key and sector size.
			re := fmt.Sprintf(`volume (data|wal): /dev/vd[a-z] -> /var/lib/(data|wal), uuid %s, aes-xts-plain64 512-bit, 4096-byte sectors, .* format\+map .*, mkfs `, u)
			vm.MustWaitFor(re, time.Second)
		}
		if uuids[disks[0]] == uuids[disks[1]] {
			t.Errorf("both volumes have UUID %s", uuids[disks[0]])
		}
		return uuids
	}

	vm := boot("volumes-1")
	vm.MustWaitFor(`^bulwark: volume data: /dev/vd[a-z] held nothing recognisable \(blank or crypto-erased\); it is now a new volume with a new key$`, time.Second)
	first := check(vm, nil)
	vm.Kill() // no shutdown: the headers stay, their key dies with the VM

	vm = boot("volumes-2")
	for _, d := range disks {
		vm.MustWaitFor(`held a LUKS2 header \(uuid `+first[d]+`\) from an earlier boot, whose key is gone; it is now a new volume with a new key$`, time.Second)
	}
	check(vm, first)
	if err := vm.PowerOff(2 * time.Minute); err != nil {
		t.Fatalf("%v\n%s", err, vm.Console())
	}
	vm.MustWaitFor(`^bulwark: teardown step="crypto-erase volume data"`, time.Second)
	vm.MustWaitFor(`^bulwark: teardown step="crypto-erase volume wal"`, time.Second)
	for _, d := range disks {
		assertErased(t, d)
		if containsMarker(t, d, []byte(marker)) {
			t.Errorf("%s holds the marker after the erase", d)
		}
	}

	vm = boot("volumes-3")
	vm.MustWaitFor(`^bulwark: volume wal: /dev/vd[a-z] held nothing recognisable \(blank or crypto-erased\)`, time.Second)
	if err := vm.PowerOff(2 * time.Minute); err != nil {
		t.Fatalf("%v\n%s", err, vm.Console())
	}
	for _, d := range disks {
		assertErased(t, d)
	}
}

// A disk with a partition table (here a copy of the boot disk itself) is
// never formatted: the node halts with the reason, and the disk is left
// byte for byte as it was. The copy holds this build's usr partitions, so
// the node boots without the separate system disk (two images would be
// refused before the volumes stage): it maps its system image read-only
// from the very disk the config then names as a data volume.
func TestVolumeRefusesPartitionedDisk(t *testing.T) {
	img := image(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "boot-copy.img")
	if out, err := exec.Command("cp", "--sparse=always", img.Disk, disk).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	before := fileDigest(t, disk)
	cfg := `{"version": 1, "hostname": "refuse", "volumes": [{"name": "data", "serial": "data0", "mount": "/var/lib/data"}]}`
	vm := harness.Start(t, harness.Options{Name: "refuse-boot-disk", Image: img, Config: []byte(cfg), Disks: []string{disk}, ExpectFatal: true, NoSystemDisk: true})
	vm.MustWaitFor(`^bulwark: FATAL: volumes: volume data: refusing to format: /dev/vda has a partition table`, 3*time.Minute)
	vm.Kill()
	if fileDigest(t, disk) != before {
		t.Fatal("the refused disk was modified")
	}
}

func fileDigest(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
