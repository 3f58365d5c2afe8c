package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/uuid"
	"github.com/siderolabs/go-blockdevice/v2/blkid"
	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/bootlog"
	"github.com/bulwarkvm/bulwark/internal/devmapper"
	"github.com/bulwarkvm/bulwark/internal/verity"
	"github.com/bulwarkvm/bulwark/internal/volume"
)

// The verified system image (docs/image.md): the node's /usr, made from
// Debian packages by the image build, read-only, every block checked by
// dm-verity against the root hash on the kernel command line. These names
// are the image build's (internal/imagebuild, internal/efidisk; a test
// checks they agree): the init does not link the build.
const (
	usrHashParam = "bulwark.usrhash"
	// systemSerial is the serial of the virtio disk holding system.img
	// (data, then the hash area) on a direct kernel boot.
	systemSerial = "bulwark-system"
	// The Discoverable Partitions Specification's x86-64 usr and
	// usr-verity partition types, on the UEFI disk.
	usrPartType       = "8484680c-9521-48c6-9c11-b0720656f69e"
	usrVerityPartType = "77ff5f63-e7b6-4633-acf4-1565b864c0e6"

	usrMapping = "bulwark-usr"
	// usrStaging is where the image is mounted while the volumes stage
	// still runs mke2fs from the initramfs's /usr; the usr stage then
	// moves it onto /usr.
	usrStaging = "/run/bulwark/usr"
	usrMount   = "/usr"
)

// systemImage is the mapped and mounted system image.
type systemImage struct {
	root       []byte
	dataDev    string
	hashDev    string
	hashOffset int64
	sb         *verity.Superblock
	where      string // how it was found, for the report
	node       string // /dev/mapper/bulwark-usr
	dev        uint64 // its device number
	uevents    int    // netlink socket for dm-verity's error events
	stagingDir string // tests only: the staged image's directory
}

// staging is where the image is mounted while the stages before usr run
// (a test's directory in unit tests).
func (si *systemImage) staging() string {
	if si.stagingDir != "" {
		return si.stagingDir
	}
	return usrStaging
}

// sysImg is set by the system image stage (every node has one; the stage
// halts the node otherwise).
var sysImg *systemImage

// setUpSystemImage finds the system image the kernel command line names
// by its root hash, checks that the image's superblock and the top of its
// hash tree lead to that root hash, maps it with dm-verity and mounts it
// read-only at a staging point; the workload's program must be on it, and
// is read through once so that a corrupt program stops the node here.
// It runs before the volumes stage, so that a missing or wrong image
// formats nothing. A command line without a root hash stops the node
// here too: the node runs programs only from a verified system image, and
// an unbound boot would leave an auditor no way to tell which.
func setUpSystemImage(b *boot) (string, error) {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "", err
	}
	root, err := usrHash(string(cmdline))
	if err != nil {
		return "", err
	}
	// dm-verity and squashfs are the first background modules.
	waited, err := b.awaitSystemImageModules()
	if err != nil {
		return "", err
	}
	si, err := findSystemImage("/sys", root)
	if err != nil {
		return "", err
	}
	if err := si.check(); err != nil {
		return "", err
	}
	// The socket exists before the mapping, so that no error event of
	// the device can come before anyone listens.
	if si.uevents, err = ueventSocket(); err != nil {
		return "", fmt.Errorf("system image: listening for dm-verity events: %w", err)
	}
	if err := si.mapAndMount(); err != nil {
		unix.Close(si.uevents)
		return "", err
	}
	if err := si.checkWorkload(b); err != nil {
		return "", err
	}
	sysImg = si
	b.goSafe("system image watch", func() { si.watch(b) })
	return fmt.Sprintf("root hash %s…, %s, %s of data; verified on read%s",
		hex.EncodeToString(root[:8]), si.where, humanBytes(int64(si.sb.DataBlocks)*verity.BlockSize), waitedNote(waited)), nil
}

// mountSystemUsr moves the system image onto /usr, after the volumes
// stage (which runs mke2fs from the initramfs's /usr) and before the
// workload. The initramfs's /usr (its tools and kernel modules) is hidden
// from then on; the module loader, which may still be loading the
// background set, reaches them through a descriptor (modules.go).
func mountSystemUsr(b *boot) (string, error) {
	if sysImg == nil {
		return "", errors.New("usr: no system image is mapped")
	}
	if err := unix.Mount(usrStaging, usrMount, "", unix.MS_MOVE, ""); err != nil {
		return "", fmt.Errorf("usr: moving the system image from %s to %s: %w", usrStaging, usrMount, err)
	}
	return fmt.Sprintf("the system image on %s (read-only, nodev, nosuid)", usrMount), nil
}

// usrHash finds bulwark.usrhash= on the kernel command line: an error
// when it is not there, there more than once, or not 64 hex digits (a
// SHA-256 root hash).
func usrHash(cmdline string) ([]byte, error) {
	var found []string
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, usrHashParam+"="); ok {
			found = append(found, v)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("system image: the kernel command line has no %s= (the root hash of the node's system image): a node runs its programs only from a verified system image; boot with the command line of the build (out/%s, or the UEFI disk's loader entry)", usrHashParam, "cmdline")
	case 1:
	default:
		return nil, fmt.Errorf("system image: %s= is on the kernel command line %d times", usrHashParam, len(found))
	}
	root, err := hex.DecodeString(found[0])
	if err != nil || len(root) != verity.DigestSize {
		return nil, fmt.Errorf("system image: %s=%q is not a root hash (64 hex digits)", usrHashParam, found[0])
	}
	return root, nil
}

// findSystemImage looks for the image: on a disk with the usr and
// usr-verity partitions whose UUIDs are the root hash's halves (the UEFI
// disk), or else on the whole disk with the serial bulwark-system (direct
// kernel boot). Exactly one must be there.
func findSystemImage(sysfs string, root []byte) (*systemImage, error) {
	disks, err := volume.ListDisks(sysfs)
	if err != nil {
		return nil, err
	}
	wantData, _ := uuid.FromBytes(root[:16])
	wantHash, _ := uuid.FromBytes(root[16:])
	var found []*systemImage
	var partsSeen []string
	for _, d := range disks {
		if d.Serial == systemSerial {
			off, err := squashfsEnd(d.Path)
			if err != nil {
				return nil, fmt.Errorf("system image: the disk with serial %s (%s): %w", systemSerial, d.Path, err)
			}
			found = append(found, &systemImage{root: root, dataDev: d.Path, hashDev: d.Path, hashOffset: off,
				where: fmt.Sprintf("%s (disk %s)", d.Path, systemSerial)})
			continue
		}
		if len(d.Parts) == 0 {
			continue
		}
		data, hash, seen, err := usrPartitions(sysfs, d, wantData, wantHash)
		if err != nil {
			return nil, err
		}
		partsSeen = append(partsSeen, seen...)
		if data != "" && hash != "" {
			found = append(found, &systemImage{root: root, dataDev: data, hashDev: hash,
				where: fmt.Sprintf("%s and %s (usr and usr-verity partitions)", data, hash)})
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		msg := fmt.Sprintf("system image: not found: no usr and usr-verity partitions with the UUIDs of root hash %s…, and no disk with serial %s",
			hex.EncodeToString(root[:8]), systemSerial)
		if len(partsSeen) > 0 {
			msg += "; partitions of those types here belong to another image: " + strings.Join(partsSeen, ", ")
		}
		return nil, errors.New(msg)
	}
	var where []string
	for _, f := range found {
		where = append(where, f.where)
	}
	return nil, fmt.Errorf("system image: found %d candidates (%s); exactly one is allowed", len(found), strings.Join(where, "; "))
}

// usrPartitions reads a disk's partition table and returns the device
// nodes of its usr and usr-verity partitions that carry the wanted UUIDs,
// and a description of the ones of those types that do not.
func usrPartitions(sysfs string, d volume.Disk, wantData, wantHash uuid.UUID) (data, hash string, other []string, err error) {
	f, err := os.Open(d.Path)
	if err != nil {
		return "", "", nil, fmt.Errorf("system image: %w", err)
	}
	defer f.Close()
	info, err := blkid.Probe(f, blkid.WithSkipLocking(true))
	if err != nil || info == nil {
		return "", "", nil, nil // not readable as a partitioned disk: not ours
	}
	for _, p := range info.Parts {
		if p.PartitionType == nil || p.PartitionUUID == nil {
			continue
		}
		typ := strings.ToLower(p.PartitionType.String())
		if typ != usrPartType && typ != usrVerityPartType {
			continue
		}
		node, err := partitionNode(sysfs, d, p.PartitionIndex)
		if err != nil {
			return "", "", nil, fmt.Errorf("system image: %w", err)
		}
		switch {
		case typ == usrPartType && *p.PartitionUUID == wantData:
			data = node
		case typ == usrVerityPartType && *p.PartitionUUID == wantHash:
			hash = node
		default:
			other = append(other, fmt.Sprintf("%s (uuid %s)", node, p.PartitionUUID))
		}
	}
	return data, hash, other, nil
}

// partitionNode returns /dev/<name> of the partition with the given number
// on the disk, from sysfs.
func partitionNode(sysfs string, d volume.Disk, index uint) (string, error) {
	for _, p := range d.Parts {
		b, err := os.ReadFile(filepath.Join(sysfs, "block", d.Name, p, "partition"))
		if err == nil && strings.TrimSpace(string(b)) == fmt.Sprint(index) {
			return "/dev/" + p, nil
		}
	}
	return "", fmt.Errorf("%s: the kernel shows no partition %d", d.Path, index)
}

// squashfsEnd returns where the hash area starts on a system.img disk:
// after the squashfs, whose superblock gives its size (bytes_used),
// rounded up to the verity block. The value is not trusted: a wrong one
// finds no superblock, or a tree that does not lead to the root hash.
func squashfsEnd(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sb := make([]byte, 96)
	if _, err := f.ReadAt(sb, 0); err != nil {
		return 0, fmt.Errorf("reading its first block: %w", err)
	}
	if !bytes.Equal(sb[0:4], []byte("hsqs")) {
		return 0, errors.New("it does not begin with a squashfs superblock")
	}
	used := int64(binary.LittleEndian.Uint64(sb[40:48]))
	if used <= 0 || used > 1<<40 {
		return 0, fmt.Errorf("its squashfs superblock says %d bytes", used)
	}
	return (used + verity.BlockSize - 1) / verity.BlockSize * verity.BlockSize, nil
}

// check reads the verity superblock and requires that it and the top block
// of the tree lead to the root hash, and that the data fits its device.
func (si *systemImage) check() error {
	hf, err := os.Open(si.hashDev)
	if err != nil {
		return fmt.Errorf("system image: %w", err)
	}
	defer hf.Close()
	df, err := os.Open(si.dataDev)
	if err != nil {
		return fmt.Errorf("system image: %w", err)
	}
	defer df.Close()
	sb, err := verity.ReadSuperblock(hf, si.hashOffset)
	if err != nil {
		return fmt.Errorf("system image: %s at %d: %w", si.hashDev, si.hashOffset, err)
	}
	dataBytes := int64(sb.DataBlocks) * verity.BlockSize
	size, err := df.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("system image: %w", err)
	}
	if dataBytes > size || (si.dataDev == si.hashDev && dataBytes != si.hashOffset) {
		return fmt.Errorf("system image: the verity superblock on %s says %d data blocks, which do not fit the data (%d bytes before the hash area, %d on the device)",
			si.hashDev, sb.DataBlocks, si.hashOffset, size)
	}
	if err := verity.CheckRoot(df, hf, si.hashOffset, sb, si.root); err != nil {
		if errors.Is(err, verity.ErrRootMismatch) {
			return fmt.Errorf("system image: the root hash on the kernel command line (%s=%s…) does not match the image on %s: its superblock and hash tree lead to another root hash; this is not the image the boot was built with",
				usrHashParam, hex.EncodeToString(si.root[:8]), si.where)
		}
		return fmt.Errorf("system image: %w", err)
	}
	si.sb = sb
	return nil
}

// mapAndMount maps the image with dm-verity (I/O errors for blocks that
// fail verification, no restart or panic: the init reports it and halts
// the node, see watch) and mounts it read-only, nodev, nosuid at the
// staging point.
func (si *systemImage) mapAndMount() error {
	c, err := devmapper.Open()
	if err != nil {
		return fmt.Errorf("system image: %w", err)
	}
	defer c.Close()
	node, err := c.MapVerity(usrMapping, "BULWARK-VERITY-USR", devmapper.Verity{
		DataDevice: si.dataDev, HashDevice: si.hashDev, BlockSize: verity.BlockSize,
		DataBlocks: si.sb.DataBlocks, HashStart: uint64(si.hashOffset/verity.BlockSize) + 1,
		Algorithm: verity.Algorithm, RootHash: si.root, Salt: si.sb.Salt,
	})
	if err != nil {
		return fmt.Errorf("system image: dm-verity: %w", err)
	}
	si.node = node
	var st unix.Stat_t
	if err := unix.Stat(node, &st); err != nil {
		return fmt.Errorf("system image: %w", err)
	}
	si.dev = st.Rdev
	if err := os.MkdirAll(usrStaging, 0o755); err != nil {
		return fmt.Errorf("system image: %w", err)
	}
	if err := unix.Mount(node, usrStaging, "squashfs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		if why := si.corrupted(); why != "" {
			return fmt.Errorf("system image: dm-verity: mounting it failed (%v): %s", err, why)
		}
		return fmt.Errorf("system image: mounting %s (squashfs) on %s: %w", node, usrStaging, err)
	}
	return nil
}

// corrupted says, from the verity target's status, whether a block failed
// verification.
func (si *systemImage) corrupted() string {
	c, err := devmapper.Open()
	if err != nil {
		return ""
	}
	defer c.Close()
	if st, err := c.VerityStatus(usrMapping); err == nil && st == "C" {
		return "a block of the image does not match its hash (the image is corrupt)"
	}
	return ""
}

// checkWorkload requires every program PID1 will start from the image
// to be on it, so that a program that is not there stops the node before
// anything is formatted: the workload's program, each backup command
// source's (run as the workload's user), and the backup service's own
// program when there is a backup section. The workload's programs are
// read through too, so that one the image does not verify stops the node
// here; the backup program (8 MiB, about 2 s of hashing under emulation)
// is not: a corrupt block of it halts the node through the dm-verity
// watch when it is first started, before any backup runs.
func (si *systemImage) checkWorkload(b *boot) error {
	if w := b.cfg.Workload; w != nil {
		if err := si.checkProgram("the workload's program", w.Command[0], true); err != nil {
			return err
		}
	}
	if bk := b.cfg.Backup; bk != nil {
		for i, src := range bk.Sources {
			if src.Kind == "command" {
				if err := si.checkProgram(fmt.Sprintf("backup.sources[%d]'s program", i), src.Command[0], true); err != nil {
					return err
				}
			}
		}
		if err := si.checkProgram("the backup service's program", backupProgram, false); err != nil {
			return err
		}
	}
	return nil
}

// checkProgram requires prog to be an executable file on the image and,
// with readThrough, reads it through.
func (si *systemImage) checkProgram(what, prog string, readThrough bool) error {
	staged, err := stagedPath(si.staging(), prog)
	if err != nil {
		return fmt.Errorf("system image: %s %s: %w", what, prog, err)
	}
	f, err := os.Open(staged)
	if err != nil {
		return fmt.Errorf("system image: %s %s is not on the system image: %w", what, prog, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("system image: %s %s is not a file on the system image", what, prog)
	}
	if st.Mode().Perm()&0o001 == 0 {
		return fmt.Errorf("system image: %s %s is not executable by others (mode %v): unprivileged processes could not run it", what, prog, st.Mode().Perm())
	}
	if !readThrough {
		return nil
	}
	if _, err := io.Copy(io.Discard, f); err != nil {
		if why := si.corrupted(); why != "" {
			return fmt.Errorf("system image: dm-verity: %s %s fails verification: %s (%v)", what, prog, why, err)
		}
		return fmt.Errorf("system image: reading %s %s: %w", what, prog, err)
	}
	return nil
}

// stagedPath resolves a path under /usr to where it is while the image is
// at the staging point, following the image's symbolic links as they will
// resolve on /usr. A path that is, or leads, outside /usr is not on the
// image.
func stagedPath(staging, p string) (string, error) {
	for hops := 0; hops < 40; hops++ {
		p = path.Clean(p)
		rel, ok := strings.CutPrefix(p, usrMount+"/")
		if !ok {
			return "", fmt.Errorf("it is not under %s, where the system image is: with a system image, the workload runs only programs from it", usrMount)
		}
		parts := strings.Split(rel, "/")
		cur := staging
		redirected := false
		for i, part := range parts {
			cur = filepath.Join(cur, part)
			st, err := os.Lstat(cur)
			if err != nil {
				return "", fmt.Errorf("not on the system image: %w", err)
			}
			if st.Mode()&os.ModeSymlink == 0 {
				continue
			}
			target, err := os.Readlink(cur)
			if err != nil {
				return "", err
			}
			if !path.IsAbs(target) {
				target = path.Join(usrMount, path.Dir(strings.TrimPrefix(cur, staging)), target)
			}
			p, redirected = path.Join(target, strings.Join(parts[i+1:], "/")), true
			break
		}
		if !redirected {
			return cur, nil
		}
	}
	return "", errors.New("too many levels of symbolic links")
}

// ueventSocket opens a socket for the kernel's uevents, where dm-verity
// reports each block that fails verification (DM_VERITY_ERR_BLOCK_NR).
func ueventSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// watch halts the node on the first block of the image that fails
// verification. dm-verity has already refused the block to its reader (an
// I/O error: no corrupt byte reaches a program); the init says so on the
// console and shuts the node down: the workload is stopped, the volumes
// are crypto-erased, the machine powers off. A node whose programs are
// damaged is replaced, not left running.
func (si *systemImage) watch(b *boot) {
	buf := make([]byte, 16<<10)
	for {
		n, _, err := unix.Recvfrom(si.uevents, buf, 0)
		if err != nil {
			if err == unix.EINTR || err == unix.ENOBUFS {
				continue
			}
			b.log.Warn("system image: no longer watching for dm-verity errors: " + err.Error())
			return
		}
		kind, block, ok := verityError(buf[:n], si.dev)
		if !ok {
			continue
		}
		b.log.Log(context.Background(), bootlog.LevelFatal, fmt.Sprintf("system image: dm-verity: %s block %d of %s failed verification: the image is corrupt; its readers got an I/O error; stopping the workload and powering off", kind, block, usrMount))
		b.requestShutdown("system image corrupted")
		// Later errors are the same news.
		for {
			if _, _, err := unix.Recvfrom(si.uevents, buf, 0); err != nil && err != unix.EINTR && err != unix.ENOBUFS {
				return
			}
		}
	}
}

// verityError parses one uevent: a change event of the device dev carrying
// DM_VERITY_ERR_BLOCK_NR=<type>,<block> (type 0 data, 1 the hash tree).
func verityError(msg []byte, dev uint64) (kind string, block uint64, ok bool) {
	var major, minor string
	var nr string
	for _, f := range bytes.Split(msg, []byte{0}) {
		k, v, found := strings.Cut(string(f), "=")
		if !found {
			continue
		}
		switch k {
		case "MAJOR":
			major = v
		case "MINOR":
			minor = v
		case "DM_VERITY_ERR_BLOCK_NR":
			nr = v
		}
	}
	if nr == "" {
		return "", 0, false
	}
	if major != "" && minor != "" && fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev)) != major+":"+minor {
		return "", 0, false
	}
	t, b, found := strings.Cut(nr, ",")
	if !found {
		return "", 0, false
	}
	if _, err := fmt.Sscanf(b, "%d", &block); err != nil {
		return "", 0, false
	}
	kind = "data"
	if t == "1" {
		kind = "hash tree"
	}
	return kind, block, true
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
