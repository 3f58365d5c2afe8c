package devmapper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Crypt describes a dm-crypt target. The key never appears in it: the
// table names a "logon" key in the kernel keyring, which the kernel reads
// while it builds the target and which no process can read back.
type Crypt struct {
	Cipher     string // such as "aes-xts-plain64"
	KeySize    int    // bytes
	KeyDesc    string // description of the logon key, "prefix:name"
	IVOffset   uint64 // sectors added to the IV (the LUKS2 iv_tweak)
	Device     string // the backing block device
	Offset     uint64 // where the data starts on Device, in 512-byte sectors
	SectorSize int    // encryption sector size: 512 or 4096
	// AllowDiscards passes discards down to the device. Off by default:
	// discarded blocks show an observer which parts of the disk are in use.
	AllowDiscards bool
}

// Params renders the dm-crypt table parameters.
func (c Crypt) Params() string {
	var opts []string
	if c.AllowDiscards {
		opts = append(opts, "allow_discards")
	}
	if c.SectorSize != 0 && c.SectorSize != 512 {
		opts = append(opts, fmt.Sprintf("sector_size:%d", c.SectorSize))
	}
	p := fmt.Sprintf("%s :%d:logon:%s %d %s %d", c.Cipher, c.KeySize, c.KeyDesc, c.IVOffset, c.Device, c.Offset)
	if len(opts) > 0 {
		p += fmt.Sprintf(" %d %s", len(opts), strings.Join(opts, " "))
	}
	return p
}

func (c Crypt) check() error {
	switch {
	case c.Cipher == "" || strings.ContainsAny(c.Cipher, " \n"):
		return fmt.Errorf("cipher %q", c.Cipher)
	case c.KeySize <= 0:
		return fmt.Errorf("key size %d", c.KeySize)
	case !strings.Contains(c.KeyDesc, ":") || strings.ContainsAny(c.KeyDesc, " \n"):
		return fmt.Errorf("key description %q must be \"prefix:name\" without spaces (logon keys need a prefix)", c.KeyDesc)
	case !filepath.IsAbs(c.Device) || strings.ContainsAny(c.Device, " \n"):
		return fmt.Errorf("device %q", c.Device)
	case c.SectorSize != 0 && c.SectorSize != 512 && c.SectorSize != 1024 && c.SectorSize != 2048 && c.SectorSize != 4096:
		return fmt.Errorf("sector size %d", c.SectorSize)
	}
	return nil
}

// MapCrypt creates the crypt device name (length in 512-byte sectors) and
// activates it. key goes into the calling thread's keyring as a logon key
// for exactly as long as the kernel needs to build the target, and is
// invalidated right after: from then on it lives only inside dm-crypt. It
// returns the device node it made, /dev/mapper/<name>. On any failure
// nothing is left behind: no device, no key, no node.
func (c *Control) MapCrypt(name, uuid string, length uint64, cr Crypt, key []byte) (string, error) {
	if err := cr.check(); err != nil {
		return "", fmt.Errorf("devmapper: crypt target for %s: bad %w", name, err)
	}
	if len(key) != cr.KeySize {
		return "", fmt.Errorf("devmapper: crypt target for %s: key is %d bytes, table says %d", name, len(key), cr.KeySize)
	}
	if cr.SectorSize > 512 && length%uint64(cr.SectorSize/512) != 0 {
		return "", fmt.Errorf("devmapper: crypt target for %s: %d sectors is not a whole number of %d-byte sectors", name, length, cr.SectorSize)
	}
	dev, err := c.Create(name, uuid)
	if err != nil {
		return "", err
	}
	undo := func(err error) (string, error) {
		if rerr := c.Remove(name); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return "", err
	}
	err = withLogonKey(cr.KeyDesc, key, func() error {
		return c.Load(name, []Target{{Start: 0, Length: length, Type: "crypt", Params: cr.Params()}}, true)
	})
	if err != nil {
		return undo(err)
	}
	if err := c.Resume(name); err != nil {
		return undo(err)
	}
	node := filepath.Join(filepath.Dir(ControlPath), name)
	os.Remove(node)
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(dev)); err != nil {
		return undo(fmt.Errorf("devmapper: making %s: %w", node, err))
	}
	return node, nil
}

// RemoveNode removes the device and the node MapCrypt made for it.
func (c *Control) RemoveNode(name string) error {
	if err := c.Remove(name); err != nil {
		return err
	}
	node := filepath.Join(filepath.Dir(ControlPath), name)
	if err := os.Remove(node); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("devmapper: %w", err)
	}
	return nil
}

// withLogonKey puts key into the thread keyring as a logon key named desc,
// runs fn on the same thread, and invalidates the key. The thread keyring
// is private to this OS thread, so no other process or thread can find the
// key even while it exists; logon keys cannot be read from user space at
// all.
func withLogonKey(desc string, key []byte, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	id, err := unix.AddKey("logon", desc, key, unix.KEY_SPEC_THREAD_KEYRING)
	if err != nil {
		return fmt.Errorf("devmapper: adding the logon key %s to the thread keyring: %w", desc, err)
	}
	ferr := fn()
	if _, err := unix.KeyctlInt(unix.KEYCTL_INVALIDATE, id, 0, 0, 0); err != nil {
		// Fail closed: a key we cannot drop is an error even if the
		// mapping worked.
		return errors.Join(ferr, fmt.Errorf("devmapper: invalidating the logon key %s: %w", desc, err))
	}
	return ferr
}
