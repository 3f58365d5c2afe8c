//go:build guest

// These tests run inside the test-only guest image (qemu-tests builds it
// with this file compiled in and boots it with rdinit=guesttest), where
// the kernel has device-mapper and the disks data0 and data1 are scratch
// virtio disks. They prove that our dm-crypt table matches our header by
// round trips through the real cryptsetup, and measure both.
package volume

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/devmapper"
	"github.com/bulwarkvm/bulwark/internal/luks2"
	"github.com/bulwarkvm/bulwark/internal/proc"
)

func guestDisk(t testing.TB, serial string) string {
	t.Helper()
	if os.Getenv("BULWARK_GUEST") != "1" {
		t.Fatal("guest tests run only inside the guest test image (see qemu-tests)")
	}
	disks, err := ListDisks("/sys")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Find(disks, serial, "")
	if err != nil {
		t.Fatal(err)
	}
	return d.Path
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func keyFile(t testing.TB, b []byte) string {
	p := t.TempDir() + "/key"
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func devSize(t testing.TB, dev string) int64 {
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func writeAt(t testing.TB, dev string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readAt(t testing.TB, dev string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// mapOurs maps dev from its LUKS2 header with the passphrase, the way the
// init does (header -> segment -> dm-crypt table with a keyring key).
func mapOurs(t testing.TB, dev, name string, pass []byte) string {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	h, err := luks2.Read(f)
	if err != nil {
		t.Fatal(err)
	}
	seg, err := h.Segment()
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, luks2.KeySize)
	if _, err := h.Unlock(f, pass, key); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ctl, err := devmapper.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	size := devSize(t, dev)
	node, err := ctl.MapCrypt(name, "", uint64(size-int64(seg.Offset))/512, devmapper.Crypt{
		Cipher: seg.Encryption, KeySize: len(key), KeyDesc: "bulwark-test:" + name,
		IVOffset: uint64(seg.IVTweak), Device: dev, Offset: uint64(seg.Offset) / 512, SectorSize: seg.SectorSize,
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	// The table names the keyring key; the key itself is not in it.
	ctl2, _ := devmapper.Open()
	defer ctl2.Close()
	tab, err := ctl2.Table(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(tab) != 1 || !strings.Contains(tab[0].Params, ":64:logon:bulwark-test:"+name) || strings.Contains(tab[0].Params, hex.EncodeToString(key)) {
		t.Fatalf("table read back: %+v", tab)
	}
	// The logon key is gone from every keyring, or at least invalidated
	// and waiting for the key garbage collector (flag 'i').
	keys, _ := os.ReadFile("/proc/keys")
	for _, l := range strings.Split(string(keys), "\n") {
		if f := strings.Fields(l); len(f) > 8 && strings.Contains(l, "bulwark-test:"+name) && !strings.ContainsAny(f[1], "iRD") {
			t.Fatalf("the logon key is still live after the table load: %s", l)
		}
	}
	t.Cleanup(func() {
		if c, err := devmapper.Open(); err == nil {
			c.RemoveNode(name)
			c.Close()
		}
	})
	return node
}

func unmapOurs(t testing.TB, name string) {
	t.Helper()
	ctl, err := devmapper.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if err := ctl.RemoveNode(name); err != nil {
		t.Fatal(err)
	}
	if ok, err := ctl.Exists(name); err != nil || ok {
		t.Fatalf("%s still exists after remove (%v)", name, err)
	}
}

// A volume formatted and mapped by our code is opened by cryptsetup and
// reads back the same bytes.
func TestGuestOursOpenedByCryptsetup(t *testing.T) {
	for _, sector := range []int{4096, 512} {
		t.Run(fmt.Sprint(sector), func(t *testing.T) {
			dev := guestDisk(t, "data0")
			key, pass := make([]byte, 64), make([]byte, 64)
			rand.Read(key)
			rand.Read(pass)
			f, err := os.OpenFile(dev, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := luks2.Format(f, devSize(t, dev), key, pass, luks2.Options{SectorSize: sector}); err != nil {
				t.Fatal(err)
			}
			f.Close()
			node := mapOurs(t, dev, "ours", pass)
			data := make([]byte, 1<<20)
			rand.Read(data)
			writeAt(t, node, 3<<20, data)
			// The disk holds ciphertext, not the data.
			if bytes.Equal(readAt(t, dev, luks2.DataOffset+3<<20, len(data)), data) {
				t.Fatal("the data reached the disk unencrypted")
			}
			unmapOurs(t, "ours")
			run(t, "cryptsetup", "open", "--key-file", keyFile(t, pass), dev, "theirs")
			got := readAt(t, "/dev/mapper/theirs", 3<<20, len(data))
			run(t, "cryptsetup", "close", "theirs")
			if !bytes.Equal(got, data) {
				t.Fatal("cryptsetup reads other bytes than we wrote")
			}
		})
	}
}

// A volume made by cryptsetup luksFormat is mapped by our code and reads
// back the same bytes.
func TestGuestCryptsetupOpenedByOurs(t *testing.T) {
	for _, sector := range []string{"4096", "512"} {
		t.Run(sector, func(t *testing.T) {
			dev := guestDisk(t, "data1")
			pass := []byte("a passphrase for the interop test")
			kf := keyFile(t, pass)
			run(t, "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64", "--key-size", "512",
				"--hash", "sha256", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--sector-size", sector, "--key-file", kf, dev)
			run(t, "cryptsetup", "open", "--key-file", kf, dev, "theirs")
			data := make([]byte, 1<<20)
			rand.Read(data)
			writeAt(t, "/dev/mapper/theirs", 5<<20, data)
			run(t, "cryptsetup", "close", "theirs")
			node := mapOurs(t, dev, "ours", pass)
			got := readAt(t, node, 5<<20, len(data))
			unmapOurs(t, "ours")
			if !bytes.Equal(got, data) {
				t.Fatal("we read other bytes than cryptsetup wrote")
			}
		})
	}
}

// Setup and Erase end to end on a real disk: a mounted ext4 that holds
// data, then nothing a tool recognises.
func TestGuestSetupAndErase(t *testing.T) {
	guestDisk(t, "data0")
	spec := config.Volume{Name: "t", Serial: "data0", Mount: "/tmp/vol"}
	v, err := Setup(context.Background(), spec, Options{Run: proc.Run})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(v.Summary())
	if err := os.WriteFile("/tmp/vol/f", []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	var line string
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, " /tmp/vol ") {
			line = l
		}
	}
	for _, opt := range []string{"nosuid", "nodev", "noexec"} {
		if !strings.Contains(line, opt) {
			t.Errorf("mount lacks %s: %s", opt, line)
		}
	}
	run(t, "cryptsetup", "isLuks", v.Disk)
	// A disk with a mounted file system is refused.
	if _, err := Setup(context.Background(), config.Volume{Name: "u", Serial: "data0", Mount: "/tmp/vol2"}, Options{Run: proc.Run}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("formatting a disk in use: %v", err)
	}
	if err := v.Erase(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("cryptsetup", "isLuks", v.Disk).Run(); err == nil {
		t.Fatal("cryptsetup isLuks succeeds after Erase")
	}
	if _, err := os.Stat(v.Mapper); !os.IsNotExist(err) {
		t.Fatalf("%s still exists: %v", v.Mapper, err)
	}
}

// BenchmarkGuestFormatMap compares our header write and mapping with
// cryptsetup luksFormat --pbkdf pbkdf2 plus open, and our mke2fs run on
// the result, on the 1 GiB disk data0. It reports the ratio ours/theirs.
func BenchmarkGuestFormatMap(b *testing.B) {
	dev := guestDisk(b, "data0")
	size := devSize(b, dev)
	pass := make([]byte, 64)
	rand.Read(pass)
	kf := keyFile(b, pass)
	var ours, theirs, mkfs time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		key := make([]byte, 64)
		rand.Read(key)
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := luks2.Format(f, size, key, pass, luks2.Options{}); err != nil {
			b.Fatal(err)
		}
		f.Close()
		ctl, _ := devmapper.Open()
		node, err := ctl.MapCrypt("bench", "", uint64(size-luks2.DataOffset)/512, devmapper.Crypt{
			Cipher: luks2.Cipher, KeySize: 64, KeyDesc: "bulwark-bench:x", Device: dev, Offset: luks2.DataOffset / 512, SectorSize: 4096,
		}, key)
		if err != nil {
			b.Fatal(err)
		}
		ours += time.Since(t0)
		t0 = time.Now()
		run(b, "/usr/sbin/mke2fs", "-t", "ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", node)
		mkfs += time.Since(t0)
		ctl.RemoveNode("bench")
		ctl.Close()

		t0 = time.Now()
		run(b, "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64", "--key-size", "512",
			"--hash", "sha256", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--sector-size", "4096", "--key-file", kf, dev)
		run(b, "cryptsetup", "open", "--key-file", kf, dev, "theirs")
		theirs += time.Since(t0)
		run(b, "cryptsetup", "close", "theirs")
	}
	n := float64(b.N)
	b.ReportMetric(ours.Seconds()/n, "s-ours")
	b.ReportMetric(theirs.Seconds()/n, "s-cryptsetup")
	b.ReportMetric(ours.Seconds()/theirs.Seconds(), "ratio")
	b.ReportMetric(mkfs.Seconds()/n, "s-mkfs-1GiB")
}
