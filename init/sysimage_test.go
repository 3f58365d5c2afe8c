package main

import (
	"bytes"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/efidisk"
	"github.com/bulwarkvm/bulwark/internal/imagebuild"
	"github.com/bulwarkvm/bulwark/internal/verity"
	"github.com/bulwarkvm/bulwark/internal/volume"
)

// The init does not link the image build; the names both use agree.
func TestSystemImageNamesAgree(t *testing.T) {
	if usrHashParam != imagebuild.UsrHashParam || systemSerial != imagebuild.SystemImageSerial || usrMount != imagebuild.MountPoint {
		t.Errorf("init: %s %s %s; imagebuild: %s %s %s", usrHashParam, systemSerial, usrMount,
			imagebuild.UsrHashParam, imagebuild.SystemImageSerial, imagebuild.MountPoint)
	}
	if backupProgram != imagebuild.BackupProgram {
		t.Errorf("init runs the backup service from %s; the image build puts it at %s", backupProgram, imagebuild.BackupProgram)
	}
	if !strings.EqualFold(usrPartType, efidisk.UsrPartitionType) || !strings.EqualFold(usrVerityPartType, efidisk.UsrVerityPartitionType) {
		t.Error("the partition types differ from efidisk's")
	}
}

func TestUsrHash(t *testing.T) {
	h := strings.Repeat("ab", 32)
	root, err := usrHash("console=ttyS0,115200 panic=-1 quiet bulwark.usrhash=" + h)
	if err != nil || hex.EncodeToString(root) != h {
		t.Fatalf("%x %v", root, err)
	}
	for cmdline, want := range map[string]string{
		// Every node has a system image: no root hash stops the boot.
		"console=ttyS0 quiet": "has no bulwark.usrhash=",
		"":                    "has no bulwark.usrhash=",
		"bulwark.usrhash=" + h + " bulwark.usrhash=" + h: "2 times",
		"bulwark.usrhash=" + h[:62]:                      "not a root hash",
		"bulwark.usrhash=" + h[:63] + "g":                "not a root hash",
		"bulwark.usrhash=":                               "not a root hash",
	} {
		if _, err := usrHash(cmdline); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", cmdline, err, want)
		}
	}
}

func TestVerityError(t *testing.T) {
	dev := uint64(254<<8 | 0)
	msg := []byte("change@/devices/virtual/block/dm-0\x00ACTION=change\x00DEVPATH=/devices/virtual/block/dm-0\x00SUBSYSTEM=block\x00MAJOR=254\x00MINOR=0\x00DEVNAME=dm-0\x00DM_VERITY_ERR_BLOCK_NR=0,1234\x00SEQNUM=99\x00")
	kind, block, ok := verityError(msg, dev)
	if !ok || kind != "data" || block != 1234 {
		t.Fatalf("%s %d %v", kind, block, ok)
	}
	if kind, _, ok := verityError(bytes.ReplaceAll(msg, []byte("=0,1234"), []byte("=1,7")), dev); !ok || kind != "hash tree" {
		t.Fatalf("hash block: %s %v", kind, ok)
	}
	if _, _, ok := verityError(msg, uint64(254<<8|1)); ok {
		t.Error("another device's error was taken for ours")
	}
	if _, _, ok := verityError([]byte("add@/devices/virtual/block/loop0\x00ACTION=add\x00MAJOR=7\x00MINOR=0\x00"), dev); ok {
		t.Error("an ordinary uevent was taken for a verity error")
	}
}

// systemImg writes a small system.img as the image build does (squashfs,
// then the verity hash area) holding usr/lib/prog, and returns its path
// and root hash.
func systemImg(t *testing.T) (string, []byte) {
	t.Helper()
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "lib", "x"), 0o755)
	os.WriteFile(filepath.Join(src, "lib", "x", "prog"), bytes.Repeat([]byte("program "), 5000), 0o755)
	os.Symlink("/usr/lib/x/prog", filepath.Join(src, "lib", "abs"))
	os.Symlink("x/prog", filepath.Join(src, "lib", "rel"))
	img := filepath.Join(t.TempDir(), "system.img")
	if out, err := exec.Command("mksquashfs", src, img, "-noappend", "-quiet", "-no-progress", "-all-root").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs (squashfs-tools): %v\n%s", err, out)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	size := (st.Size() + 4095) / 4096 * 4096
	f.Truncate(size)
	res, err := verity.Format(f, uint64(size/4096), f, size, verity.Superblock{Salt: []byte("salt")})
	if err != nil {
		t.Fatal(err)
	}
	return img, res.RootHash[:]
}

// TestSystemImageCheck: on a system.img laid out as the build writes it,
// the hash area is found after the squashfs, and the check accepts the
// right root hash and refuses another one, or a damaged superblock,
// naming what is wrong.
func TestSystemImageCheck(t *testing.T) {
	img, root := systemImg(t)
	off, err := squashfsEnd(img)
	if err != nil {
		t.Fatal(err)
	}
	si := &systemImage{root: root, dataDev: img, hashDev: img, hashOffset: off, where: "test"}
	if err := si.check(); err != nil {
		t.Fatalf("the right root hash: %v", err)
	}
	other := bytes.Clone(root)
	other[0] ^= 1
	si = &systemImage{root: other, dataDev: img, hashDev: img, hashOffset: off, where: "test"}
	if err := si.check(); err == nil || !strings.Contains(err.Error(), "does not match the image") {
		t.Fatalf("another root hash: %v", err)
	}
	b, _ := os.ReadFile(img)
	b[off+12] = 0 // hash type 0
	os.WriteFile(img, b, 0o600)
	si = &systemImage{root: root, dataDev: img, hashDev: img, hashOffset: off, where: "test"}
	if err := si.check(); err == nil || !strings.Contains(err.Error(), "hash type 0") {
		t.Fatalf("a damaged superblock: %v", err)
	}
	if _, err := squashfsEnd("/dev/null"); err == nil {
		t.Error("an empty device was taken for a system image")
	}
}

// TestStagedPath: the workload's program resolves on the staged image as
// it will on /usr, through absolute and relative links; a path outside
// /usr, or one the image does not have, is refused.
func TestStagedPath(t *testing.T) {
	staging := t.TempDir()
	os.MkdirAll(filepath.Join(staging, "lib", "x"), 0o755)
	os.WriteFile(filepath.Join(staging, "lib", "x", "prog"), []byte("p"), 0o755)
	os.Symlink("/usr/lib/x/prog", filepath.Join(staging, "lib", "abs"))
	os.Symlink("x/prog", filepath.Join(staging, "lib", "rel"))
	os.Symlink("/etc/passwd", filepath.Join(staging, "lib", "out"))
	want := filepath.Join(staging, "lib", "x", "prog")
	for _, p := range []string{"/usr/lib/x/prog", "/usr/lib/abs", "/usr/lib/rel"} {
		got, err := stagedPath(staging, p)
		if err != nil || got != want {
			t.Errorf("%s: %s %v", p, got, err)
		}
	}
	for p, wantErr := range map[string]string{
		"/opt/prog":       "not under /usr",
		"/usr/lib/out":    "not under /usr",
		"/usr/lib/nosuch": "not on the system image",
	} {
		if _, err := stagedPath(staging, p); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: %v, want %q", p, err, wantErr)
		}
	}
}

// TestProgramsOnImage: every program PID1 starts as the workload's user
// or as the backup service must be an executable file on the system
// image: a backup command source outside /usr (here the init itself) is
// refused before anything is formatted, as is a missing or unexecutable
// backup program.
func TestProgramsOnImage(t *testing.T) {
	staging := t.TempDir()
	os.MkdirAll(filepath.Join(staging, "lib", "postgresql", "bin"), 0o755)
	os.MkdirAll(filepath.Join(staging, "libexec", "bulwark"), 0o755)
	os.WriteFile(filepath.Join(staging, "lib", "postgresql", "bin", "postgres"), []byte("p"), 0o755)
	os.WriteFile(filepath.Join(staging, "lib", "postgresql", "bin", "pg_dump"), []byte("d"), 0o755)
	prog := filepath.Join(staging, strings.TrimPrefix(backupProgram, "/usr/"))
	si := &systemImage{stagingDir: staging}
	cfg := func(cmd string) *boot {
		return &boot{cfg: &config.Config{
			Workload: &config.Workload{Command: []string{"/usr/lib/postgresql/bin/postgres"}, UID: 999, GID: 999},
			Backup:   &config.Backup{Sources: []config.BackupSource{{Kind: "tree", Path: "/data"}, {Kind: "command", Command: []string{cmd}}}},
		}}
	}
	if err := si.checkWorkload(cfg("/usr/lib/postgresql/bin/pg_dump")); err == nil || !strings.Contains(err.Error(), "the backup service's program "+backupProgram+": not on the system image") {
		t.Errorf("no backup program on the image: %v", err)
	}
	os.WriteFile(prog, []byte("b"), 0o700)
	if err := si.checkWorkload(cfg("/usr/lib/postgresql/bin/pg_dump")); err == nil || !strings.Contains(err.Error(), "not executable by others") {
		t.Errorf("a backup program only root may run: %v", err)
	}
	os.Chmod(prog, 0o755)
	if err := si.checkWorkload(cfg("/usr/lib/postgresql/bin/pg_dump")); err != nil {
		t.Errorf("every program on the image: %v", err)
	}
	for cmd, want := range map[string]string{
		"/init":                       "backup.sources[1]'s program /init: it is not under /usr",
		"/usr/lib/postgresql/bin/nox": "backup.sources[1]'s program /usr/lib/postgresql/bin/nox: not on the system image",
	} {
		if err := si.checkWorkload(cfg(cmd)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("command source %s: %v, want %q", cmd, err, want)
		}
	}
}

// TestUsrPartitions: on a UEFI disk the image build's efidisk writes, the
// usr and usr-verity partitions are found by their types and the root
// hash's UUIDs; another root hash finds none and names the pair it saw.
func TestUsrPartitions(t *testing.T) {
	img, root := systemImg(t)
	off, err := squashfsEnd(img)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(img)
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initramfs.img", "boot.efi"} {
		os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644)
	}
	disk := filepath.Join(dir, "disk.img")
	err = efidisk.Build(disk, efidisk.Spec{Kernel: filepath.Join(dir, "vmlinuz"), Initramfs: filepath.Join(dir, "initramfs.img"),
		Bootloader: filepath.Join(dir, "boot.efi"), Cmdline: "quiet", Size: 128 << 20,
		Usr: &efidisk.Usr{Image: img, DataBytes: off, HashOffset: off, HashBytes: st.Size() - off, RootHash: root}})
	if err != nil {
		t.Fatal(err)
	}
	sysfs := t.TempDir()
	for i, p := range []string{"vda1", "vda2", "vda3"} {
		os.MkdirAll(filepath.Join(sysfs, "block", "vda", p), 0o755)
		os.WriteFile(filepath.Join(sysfs, "block", "vda", p, "partition"), []byte{byte('1' + i), '\n'}, 0o644)
	}
	d := volume.Disk{Name: "vda", Path: disk, Parts: []string{"vda1", "vda2", "vda3"}}
	wantData, _ := uuid.FromBytes(root[:16])
	wantHash, _ := uuid.FromBytes(root[16:])
	data, hash, other, err := usrPartitions(sysfs, d, wantData, wantHash)
	if err != nil || data != "/dev/vda2" || hash != "/dev/vda3" || len(other) != 0 {
		t.Fatalf("data %q hash %q other %q: %v", data, hash, other, err)
	}
	wantData[0] ^= 1
	data, _, other, err = usrPartitions(sysfs, d, wantData, wantHash)
	if err != nil || data != "" || len(other) != 1 || !strings.Contains(other[0], "/dev/vda2") {
		t.Fatalf("another root hash: data %q other %q: %v", data, other, err)
	}
}
