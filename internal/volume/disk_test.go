package volume

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/luks2"
)

// fakeSysfs builds a /sys/block with a boot disk (vda, partitioned), two
// data disks and a loop device.
func fakeSysfs(t *testing.T) (sysfs, mountinfo string) {
	t.Helper()
	sysfs = t.TempDir()
	write := func(p, s string) {
		p = filepath.Join(sysfs, "block", p)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("vda/dev", "254:0")
	write("vda/serial", "boot")
	write("vda/ro", "0")
	write("vda/vda1/partition", "1")
	write("vda/vda1/dev", "254:1")
	write("vdb/dev", "254:16")
	write("vdb/serial", "data0")
	write("vdb/ro", "0")
	write("vdc/dev", "254:32")
	write("vdc/serial", "data1")
	write("vdc/ro", "1")
	write("vdd/dev", "254:48")
	write("vdd/serial", "data2")
	write("vdd/ro", "0")
	write("loop0/dev", "7:0")
	os.MkdirAll(filepath.Join(sysfs, "block/vdb/holders"), 0o755)
	mountinfo = filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(mountinfo, []byte("22 1 0:5 / /dev rw - devtmpfs devtmpfs rw\n30 1 254:48 / /mnt rw - ext4 /dev/vdd rw\n"), 0o644)
	return sysfs, mountinfo
}

func TestFindAndGuards(t *testing.T) {
	sysfs, mountinfo := fakeSysfs(t)
	disks, err := ListDisks(sysfs)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 4 {
		t.Fatalf("want 4 disks (loop left out), got %+v", disks)
	}
	d, err := Find(disks, "data0", "")
	if err != nil || d.Path != "/dev/vdb" {
		t.Fatalf("serial data0: %v %+v", err, d)
	}
	d, err = Find(disks, "", "virtio-data0")
	if err != nil || d.Path != "/dev/vdb" {
		t.Fatalf("by-id virtio-data0: %v %+v", err, d)
	}
	if err := checkUsable(d, sysfs, mountinfo, ""); err != nil {
		t.Fatalf("vdb should be usable: %v", err)
	}
	if _, err := Find(disks, "nope", ""); err == nil || !strings.Contains(err.Error(), `vdb (serial "data0")`) {
		t.Fatalf("missing disk error should list the disks: %v", err)
	}
	for serial, want := range map[string]string{
		"boot":  "partition table",
		"data1": "read-only",
		"data2": "mounted file system (at /mnt)",
	} {
		d, err := Find(disks, serial, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := checkUsable(d, sysfs, mountinfo, ""); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", serial, err, want)
		}
	}
	d, _ = Find(disks, "data0", "")
	if err := checkUsable(d, sysfs, mountinfo, "/dev/vdb"); err == nil || !strings.Contains(err.Error(), "config volume") {
		t.Errorf("config device: %v", err)
	}
}

func TestPreviousContents(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(p, make([]byte, 20<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := previousContents(p)
	if err != nil || !strings.Contains(got, "blank") {
		t.Fatalf("blank disk: %q %v", got, err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	h, err := luks2.Format(f, 20<<20, make([]byte, 64), []byte("x"), luks2.Options{})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	got, err = previousContents(p)
	if err != nil || !strings.Contains(got, h.UUID) || !strings.Contains(got, "earlier boot") {
		t.Fatalf("LUKS2 disk: %q %v", got, err)
	}
	if out, err := exec.Command("cryptsetup", "isLuks", p).CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup isLuks before the erase: %v %s", err, out)
	}
	if err := EraseHeader(p); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("cryptsetup", "isLuks", p).Run(); err == nil {
		t.Fatal("cryptsetup isLuks still succeeds after EraseHeader")
	}
	got, err = previousContents(p)
	if err != nil || !strings.Contains(got, "blank or crypto-erased") {
		t.Fatalf("erased disk: %q %v", got, err)
	}
}
