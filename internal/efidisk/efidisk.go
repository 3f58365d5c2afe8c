// Package efidisk writes the UEFI-bootable disk: a GPT (go-diskfs) with one
// EFI system partition holding systemd-boot, a loader entry, the kernel and
// the initramfs, and, when there is a system image, its usr and usr-verity
// partitions after it.
//
// The FAT file system is made with dosfstools and mtools rather than
// go-diskfs, whose FAT32 writer stamps the current time into every directory
// entry and derives the volume ID from the clock; mkfs.fat --invariant and
// mtools with SOURCE_DATE_EPOCH give identical bytes for identical inputs,
// which reproducible images need. All identifiers (disk and partition GUIDs,
// FAT volume ID) are derived from a digest of the inputs.
package efidisk

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"
)

// DefaultBootloader is systemd-boot as Debian's systemd-boot-efi ships it.
const DefaultBootloader = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// SourceDateEpoch is the timestamp written into the FAT when the environment
// does not set SOURCE_DATE_EPOCH (2020-01-01T00:00:00Z; FAT cannot store
// dates before 1980).
const SourceDateEpoch = 1577836800

const (
	sector   = 512
	firstLBA = 2048 // 1 MiB alignment
	gptTail  = 33   // backup partition array and header
	MinSize  = 64 << 20
)

// Spec describes a disk.
type Spec struct {
	Kernel     string // host path of the kernel image
	Initramfs  string // host path of the initramfs
	Cmdline    string // kernel command line
	Bootloader string // systemd-boot EFI binary; DefaultBootloader if empty
	Size       int64  // disk size in bytes, a multiple of 1 MiB, at least MinSize
	// Usr, when set, adds the system image as a partition pair after the
	// EFI system partition, which keeps at least MinSize.
	Usr *Usr
}

// Usr is the system image for the disk: the data and the verity hash area
// of one file (the image build's system.img), which become the
// Discoverable Partitions Specification's "usr" and "usr-verity"
// partitions. As that specification says, the data partition's UUID is
// the first 128 bits of the root hash and the hash partition's the last
// 128, so that the node finds the pair that belongs to the root hash on
// its command line.
type Usr struct {
	Image      string // host path of system.img
	DataBytes  int64  // the data: the file's first DataBytes bytes
	HashOffset int64  // the hash area (superblock first) starts here
	HashBytes  int64
	RootHash   []byte // 32 bytes
}

// Partition type GUIDs of the Discoverable Partitions Specification for
// x86-64.
const (
	UsrPartitionType       = "8484680C-9521-48C6-9C11-B0720656F69E"
	UsrVerityPartitionType = "77FF5F63-E7B6-4633-ACF4-1565B864C0E6"
)

// UsrPartitionUUIDs returns the UUIDs of the usr and usr-verity
// partitions for a root hash.
func UsrPartitionUUIDs(root []byte) (data, hash string) {
	f := func(b []byte) string {
		u, _ := uuid.FromBytes(b)
		return strings.ToUpper(u.String())
	}
	return f(root[:16]), f(root[16:32])
}

func mib(n int64) uint64 { return uint64((n + 1<<20 - 1) >> 20 << 20 / sector) }

// Build writes the raw disk to dst, atomically.
func Build(dst string, s Spec) error {
	if s.Bootloader == "" {
		s.Bootloader = DefaultBootloader
	}
	if s.Size < MinSize || s.Size%(1<<20) != 0 {
		return fmt.Errorf("efidisk: size %d: must be a multiple of 1 MiB and at least %d MiB", s.Size, MinSize>>20)
	}
	if strings.ContainsAny(s.Cmdline, "\n\r") {
		return fmt.Errorf("efidisk: the kernel command line may not contain line breaks")
	}
	for _, f := range []string{s.Kernel, s.Initramfs, s.Bootloader} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("efidisk: %w", err)
		}
	}
	seed, err := inputDigest(s)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(filepath.Dir(dst), ".efidisk-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	var usrSectors, hashSectors uint64
	if s.Usr != nil {
		if len(s.Usr.RootHash) != 32 || s.Usr.DataBytes <= 0 || s.Usr.HashBytes <= 0 || s.Usr.HashOffset < s.Usr.DataBytes {
			return fmt.Errorf("efidisk: the system image's layout is incomplete")
		}
		usrSectors, hashSectors = mib(s.Usr.DataBytes), mib(s.Usr.HashBytes)
	}
	espSectors := uint64(s.Size/sector) - firstLBA - gptTail - usrSectors - hashSectors
	espSectors -= espSectors % 2048 // whole MiB
	if usrSectors > 0 && int64(espSectors*sector) < MinSize {
		return fmt.Errorf("efidisk: size %d MiB leaves the EFI system partition %d MiB beside the system image's %d MiB; give at least %d MiB",
			s.Size>>20, espSectors*sector>>20, (usrSectors+hashSectors)*sector>>20, (MinSize>>20)+int64((usrSectors+hashSectors)*sector>>20)+2)
	}
	esp := filepath.Join(work, "esp.img")
	if err := makeESP(esp, int64(espSectors*sector), s, seed); err != nil {
		return err
	}

	tmp := filepath.Join(work, "disk.img")
	d, err := diskfs.Create(tmp, s.Size, diskfs.SectorSize512)
	if err != nil {
		return fmt.Errorf("efidisk: %w", err)
	}
	table := &gpt.Table{
		LogicalSectorSize:  sector,
		PhysicalSectorSize: sector,
		ProtectiveMBR:      true,
		GUID:               derivedUUID(seed, "disk"),
		Partitions: []*gpt.Partition{{
			Start: firstLBA,
			End:   firstLBA + espSectors - 1,
			Type:  gpt.EFISystemPartition,
			Name:  "EFI system partition",
			GUID:  derivedUUID(seed, "esp"),
		}},
	}
	if s.Usr != nil {
		dataUUID, hashUUID := UsrPartitionUUIDs(s.Usr.RootHash)
		start := firstLBA + espSectors
		table.Partitions = append(table.Partitions,
			&gpt.Partition{Start: start, End: start + usrSectors - 1, Type: gpt.Type(UsrPartitionType), Name: "bulwark-usr", GUID: dataUUID},
			&gpt.Partition{Start: start + usrSectors, End: start + usrSectors + hashSectors - 1, Type: gpt.Type(UsrVerityPartitionType), Name: "bulwark-usr-verity", GUID: hashUUID})
	}
	if err := d.Partition(table); err != nil {
		d.Close()
		return fmt.Errorf("efidisk: partitioning: %w", err)
	}
	f, err := os.Open(esp)
	if err != nil {
		d.Close()
		return err
	}
	_, err = d.WritePartitionContents(1, f)
	f.Close()
	if err == nil && s.Usr != nil {
		err = writeUsr(d, s.Usr)
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("efidisk: writing the EFI system partition: %w", err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// writeUsr writes the system image's data and hash area into partitions 2
// and 3.
func writeUsr(d interface {
	WritePartitionContents(int, io.Reader) (int64, error)
}, u *Usr) error {
	img, err := os.Open(u.Image)
	if err != nil {
		return err
	}
	defer img.Close()
	// go-diskfs writes a partition whole: the rest of the last MiB is
	// zeros.
	padded := func(off, n int64) io.Reader {
		return io.MultiReader(io.NewSectionReader(img, off, n), io.LimitReader(zeros{}, int64(mib(n))*sector-n))
	}
	if _, err := d.WritePartitionContents(2, padded(0, u.DataBytes)); err != nil {
		return fmt.Errorf("the usr partition: %w", err)
	}
	if _, err := d.WritePartitionContents(3, padded(u.HashOffset, u.HashBytes)); err != nil {
		return fmt.Errorf("the usr-verity partition: %w", err)
	}
	return nil
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// ConvertQcow2 writes a qcow2 copy of a raw disk with qemu-img.
func ConvertQcow2(raw, dst string) error {
	tmp := dst + ".tmp"
	out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp).CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("efidisk: qemu-img convert: %v: %s", err, out)
	}
	return os.Rename(tmp, dst)
}

func makeESP(path string, size int64, s Spec, seed [32]byte) error {
	volID := fmt.Sprintf("%08x", binary.BigEndian.Uint32(seed[:4]))
	loader := "default bulwark.conf\ntimeout 0\neditor no\nconsole-mode keep\n"
	entry := fmt.Sprintf("title bulwark\nlinux /bulwark/vmlinuz\ninitrd /bulwark/initramfs.img\noptions %s\n", s.Cmdline)
	dir := filepath.Dir(path)
	for name, content := range map[string]string{"loader.conf": loader, "bulwark.conf": entry} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"mkfs.fat", "--invariant", "-F", "32", "-S", "512", "-i", volID, "-n", "ESP", "-C", path, fmt.Sprint(size / 1024)},
		{"mmd", "-i", path, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries", "::/bulwark"},
		{"mcopy", "-i", path, s.Bootloader, "::/EFI/BOOT/BOOTX64.EFI"},
		{"mcopy", "-i", path, filepath.Join(dir, "loader.conf"), "::/loader/loader.conf"},
		{"mcopy", "-i", path, filepath.Join(dir, "bulwark.conf"), "::/loader/entries/bulwark.conf"},
		{"mcopy", "-i", path, s.Kernel, "::/bulwark/vmlinuz"},
		{"mcopy", "-i", path, s.Initramfs, "::/bulwark/initramfs.img"},
	}
	epoch := os.Getenv("SOURCE_DATE_EPOCH")
	if epoch == "" {
		epoch = fmt.Sprint(SourceDateEpoch)
	}
	for _, argv := range steps {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+epoch, "MTOOLS_SKIP_CHECK=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("efidisk: %s: %v: %s", argv[0], err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// inputDigest hashes everything that goes onto the disk.
func inputDigest(s Spec) ([32]byte, error) {
	h := sha256.New()
	fmt.Fprintf(h, "bulwark efidisk v1\x00%d\x00%s\x00", s.Size, s.Cmdline)
	if s.Usr != nil {
		// The root hash commits to the whole system image.
		fmt.Fprintf(h, "usr\x00%x\x00", s.Usr.RootHash)
	}
	for _, p := range []string{s.Bootloader, s.Kernel, s.Initramfs} {
		f, err := os.Open(p)
		if err != nil {
			return [32]byte{}, fmt.Errorf("efidisk: %w", err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return [32]byte{}, fmt.Errorf("efidisk: %w", err)
		}
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// derivedUUID makes a stable, unique-per-input UUID (version 4 layout, so
// tools treat it as random).
func derivedUUID(seed [32]byte, label string) string {
	h := sha256.Sum256(append(seed[:], label...))
	var u uuid.UUID
	copy(u[:], h[:16])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return strings.ToUpper(u.String())
}
