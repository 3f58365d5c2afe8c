// Package volume turns a data disk into an encrypted, mounted file system
// with a key that exists only for this boot, and crypto-erases it again:
// LUKS2 header (internal/luks2), dm-crypt mapping (internal/devmapper),
// ext4 (mke2fs from the image), mount. The keys live in locked memory
// (internal/secret) and are zeroed as soon as the kernel holds them.
package volume

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/siderolabs/go-blockdevice/v2/blkid"
	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/devmapper"
	"github.com/bulwarkvm/bulwark/internal/luks2"
	"github.com/bulwarkvm/bulwark/internal/secret"
)

// MountFlags are the flags every data volume is mounted with: the
// database's files are data, never devices, set-id programs or code.
const MountFlags = unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC

// Options are the node facts Setup needs; the zero value is the running
// system.
type Options struct {
	Sysfs        string // default /sys
	Mountinfo    string // default /proc/self/mountinfo
	ConfigDevice string // the config volume's device, never formatted
	Mke2fs       string // default /usr/sbin/mke2fs
	// Run runs a program (the init passes proc.Run, which cooperates with
	// its child reaper).
	Run func(ctx context.Context, argv ...string) ([]byte, error)
	// Random draws key material; default secret.Random.
	Random func(n int) (*secret.Buf, error)
}

func (o *Options) defaults() {
	if o.Sysfs == "" {
		o.Sysfs = "/sys"
	}
	if o.Mountinfo == "" {
		o.Mountinfo = "/proc/self/mountinfo"
	}
	if o.Mke2fs == "" {
		o.Mke2fs = "/usr/sbin/mke2fs"
	}
	if o.Random == nil {
		o.Random = secret.Random
	}
}

// Volume is a mapped and mounted data volume.
type Volume struct {
	Name   string
	Disk   string // /dev/vdb
	Mapper string // /dev/mapper/bulwark-<name>
	Mount  string
	UUID   string // of the LUKS2 header
	// HeaderSHA256 is the SHA-256 of the header area (both copies of the
	// binary header and JSON) as read back after it was written.
	HeaderSHA256 string
	Cipher       string
	KeyBits      int
	SectorSize   int
	DataBytes    int64
	Discard      bool
	// Previous says what the disk held before this boot formatted it
	// ("held nothing recognisable ...").
	Previous string
	// FormatMap is the time to draw the keys, write the header and map
	// the volume; Mkfs the time to make the file system.
	FormatMap, Mkfs time.Duration

	dmName  string
	mapped  bool
	mounted bool
}

// Summary is the volume's line in the readiness report.
func (v *Volume) Summary() string {
	return fmt.Sprintf("%s: %s -> %s, uuid %s, %s %d-bit, %d-byte sectors, %s, format+map %s, mkfs %s",
		v.Name, v.Disk, v.Mount, v.UUID, v.Cipher, v.KeyBits, v.SectorSize, human(v.DataBytes),
		v.FormatMap.Round(time.Millisecond), v.Mkfs.Round(time.Millisecond))
}

// Setup finds the disk for spec, checks that it may be formatted, and makes
// it an encrypted volume with fresh keys, mounted at spec.Mount. On failure
// it undoes what it did (unmount, unmap, erase the header it wrote).
func Setup(ctx context.Context, spec config.Volume, o Options) (v *Volume, err error) {
	o.defaults()
	if o.Run == nil {
		return nil, errors.New("volume: no program runner")
	}
	disks, err := ListDisks(o.Sysfs)
	if err != nil {
		return nil, err
	}
	d, err := Find(disks, spec.Serial, spec.ByID)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", spec.Name, err)
	}
	if err := checkUsable(d, o.Sysfs, o.Mountinfo, o.ConfigDevice); err != nil {
		return nil, fmt.Errorf("volume %s: refusing to format: %w", spec.Name, err)
	}
	prev, err := previousContents(d.Path)
	if err != nil {
		return nil, fmt.Errorf("volume %s: refusing to format: %w", spec.Name, err)
	}
	v = &Volume{
		Name: spec.Name, Disk: d.Path, Mount: spec.Mount, Discard: spec.Discard,
		Cipher: luks2.Cipher, KeyBits: luks2.KeySize * 8, Previous: prev,
		dmName: "bulwark-" + spec.Name,
	}
	// From here on, a failure erases whatever header there is.
	defer func() {
		if err != nil {
			if uerr := v.Erase(context.Background()); uerr != nil {
				err = errors.Join(err, fmt.Errorf("undoing: %w", uerr))
			}
		}
	}()

	t0 := time.Now()
	if err := v.format(o); err != nil {
		return nil, fmt.Errorf("volume %s: %w", spec.Name, err)
	}
	v.FormatMap = time.Since(t0)

	t0 = time.Now()
	if out, err := o.Run(ctx, o.Mke2fs, "-t", "ext4", "-q", "-F", "-L", spec.Name,
		"-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", v.Mapper); err != nil {
		return nil, fmt.Errorf("volume %s: making the file system: %w (%s)", spec.Name, err, strings.TrimSpace(string(out)))
	}
	v.Mkfs = time.Since(t0)

	if err := os.MkdirAll(spec.Mount, 0o755); err != nil {
		return nil, fmt.Errorf("volume %s: %w", spec.Name, err)
	}
	data := ""
	if spec.Discard {
		data = "discard"
	}
	if err := unix.Mount(v.Mapper, spec.Mount, "ext4", MountFlags, data); err != nil {
		return nil, fmt.Errorf("volume %s: mounting %s at %s: %w", spec.Name, v.Mapper, spec.Mount, err)
	}
	v.mounted = true
	return v, nil
}

// format draws the keys, writes the LUKS2 header and maps the volume. The
// keys are destroyed before it returns, whatever happens.
func (v *Volume) format(o Options) error {
	f, err := os.OpenFile(v.Disk, os.O_RDWR|os.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s exclusively: %w", v.Disk, err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return fmt.Errorf("size of %s: %w", v.Disk, err)
	}
	lbs, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
	if err != nil {
		f.Close()
		return fmt.Errorf("logical block size of %s: %w", v.Disk, err)
	}
	v.SectorSize = luks2.SectorSizeFor(size, lbs)
	v.DataBytes = size - luks2.DataOffset

	key, err := o.Random(luks2.KeySize)
	if err != nil {
		f.Close()
		return fmt.Errorf("drawing the volume key: %w", err)
	}
	defer key.Destroy()
	pass, err := o.Random(luks2.KeySize)
	if err != nil {
		f.Close()
		return fmt.Errorf("drawing the keyslot passphrase: %w", err)
	}
	h, err := luks2.Format(f, size, key.Bytes(), pass.Bytes(), luks2.Options{SectorSize: v.SectorSize, Label: v.dmName})
	// The passphrase has done its only job; nobody will ever open the
	// keyslot again.
	pass.Destroy()
	if err == nil {
		// The header as written, both copies, read back from the disk
		// for the TPM measurement.
		hdr := make([]byte, 2*h.HdrSize)
		if _, err = f.ReadAt(hdr, 0); err == nil {
			sum := sha256.Sum256(hdr)
			v.HeaderSHA256 = hex.EncodeToString(sum[:])
		}
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing the LUKS2 header to %s: %w", v.Disk, err)
	}
	v.UUID = h.UUID
	ctl, err := devmapper.Open()
	if err != nil {
		return err
	}
	defer ctl.Close()
	cr := devmapper.Crypt{
		Cipher:        luks2.Cipher,
		KeySize:       luks2.KeySize,
		KeyDesc:       "bulwark:" + h.UUID + "-d0",
		Device:        v.Disk,
		Offset:        luks2.DataOffset / 512,
		SectorSize:    v.SectorSize,
		AllowDiscards: v.Discard,
	}
	dmUUID := "CRYPT-LUKS2-" + strings.ReplaceAll(h.UUID, "-", "") + "-" + v.dmName
	node, err := ctl.MapCrypt(v.dmName, dmUUID, uint64(v.DataBytes/512), cr, key.Bytes())
	if err != nil {
		return err
	}
	v.Mapper, v.mapped = node, true
	return nil
}

// previousContents says what a disk holds before it is formatted, and
// refuses disks that must not be: a partition table (the boot disk has
// one) or the config volume's label.
func previousContents(dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if h, err := luks2.Read(f); err == nil {
		return fmt.Sprintf("held a LUKS2 header (uuid %s) from an earlier boot, whose key is gone", h.UUID), nil
	} else if !errors.Is(err, luks2.ErrNoHeader) {
		return "held a damaged LUKS2 header (" + err.Error() + ")", nil
	}
	info, err := blkid.Probe(f, blkid.WithSkipLocking(true))
	if err != nil || info == nil || info.Name == "" {
		return "held nothing recognisable (blank or crypto-erased)", nil
	}
	if info.Label != nil && *info.Label == config.VolumeLabel {
		return "", fmt.Errorf("%s is labelled %s (a config volume)", dev, config.VolumeLabel)
	}
	switch info.Name {
	case "gpt", "dos":
		return "", fmt.Errorf("%s holds a %s partition table; data disks are used whole, and the boot disk is partitioned", dev, info.Name)
	}
	return "held a " + info.Name + " signature", nil
}

// Erase crypto-erases the volume: unmount, remove the mapping (the kernel
// zeroes its copy of the key), then overwrite the whole LUKS2 metadata
// area (both headers and every keyslot) with random bytes. The overwrite
// happens even if the first steps fail, so that a stuck mount cannot keep
// the header alive; the errors are all returned.
func (v *Volume) Erase(ctx context.Context) error {
	var errs []error
	if v.mounted {
		if err := retry(ctx, func() error { return unix.Unmount(v.Mount, 0) }); err != nil {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", v.Mount, err))
		} else {
			v.mounted = false
		}
	}
	if v.mapped && !v.mounted {
		ctl, err := devmapper.Open()
		if err == nil {
			err = retry(ctx, func() error { return ctl.RemoveNode(v.dmName) })
			ctl.Close()
		}
		if err != nil {
			errs = append(errs, err)
		} else {
			v.mapped = false
		}
	}
	if err := EraseHeader(v.Disk); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("volume %s: %w", v.Name, errors.Join(errs...))
	}
	return nil
}

// EraseHeader overwrites the first luks2.DataOffset bytes of dev (both
// LUKS2 headers and the whole keyslots area) with random bytes, flushes
// them to the device, and checks that no header is left.
func EraseHeader(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("erasing %s: %w", dev, err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < luks2.DataOffset; off += int64(len(buf)) {
		if err := secret.Fill(buf); err != nil {
			return fmt.Errorf("erasing %s: %w", dev, err)
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("erasing %s at offset %d: %w", dev, off, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("erasing %s: flush: %w", dev, err)
	}
	// Drop the page cache's copy too, so that nothing reads the old
	// header back from memory.
	_ = unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0)
	if _, err := luks2.Read(f); !errors.Is(err, luks2.ErrNoHeader) {
		return fmt.Errorf("erasing %s: a LUKS2 header is still readable after the overwrite (%v)", dev, err)
	}
	return nil
}

// retry runs fn until it succeeds, it fails with something other than
// EBUSY, or five seconds pass.
func retry(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := fn()
		if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}
