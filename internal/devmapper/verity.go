package devmapper

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Verity describes a dm-verity target (hash type 1): a read-only device
// whose every block is checked against a hash tree on HashDevice, whose
// root is RootHash, before it reaches a reader.
type Verity struct {
	DataDevice string // the data, from its first byte
	HashDevice string // the hash tree; may be DataDevice
	BlockSize  int    // data and hash block size in bytes
	DataBlocks uint64
	// HashStart is the block of HashDevice where the tree's top level
	// begins (the block after the superblock).
	HashStart uint64
	Algorithm string // "sha256"
	RootHash  []byte
	Salt      []byte
	// Options are the target's optional arguments, such as
	// "panic_on_corruption"; none means a block that fails verification
	// is an I/O error to its reader.
	Options []string
}

// Params renders the verity table parameters.
func (v Verity) Params() string {
	salt := "-"
	if len(v.Salt) > 0 {
		salt = hex.EncodeToString(v.Salt)
	}
	p := fmt.Sprintf("1 %s %s %d %d %d %d %s %s %s", v.DataDevice, v.HashDevice, v.BlockSize, v.BlockSize,
		v.DataBlocks, v.HashStart, v.Algorithm, hex.EncodeToString(v.RootHash), salt)
	if len(v.Options) > 0 {
		p += fmt.Sprintf(" %d %s", len(v.Options), strings.Join(v.Options, " "))
	}
	return p
}

func (v Verity) check() error {
	switch {
	case !filepath.IsAbs(v.DataDevice) || strings.ContainsAny(v.DataDevice, " \n"):
		return fmt.Errorf("data device %q", v.DataDevice)
	case !filepath.IsAbs(v.HashDevice) || strings.ContainsAny(v.HashDevice, " \n"):
		return fmt.Errorf("hash device %q", v.HashDevice)
	case v.BlockSize < 512 || v.BlockSize > 1<<20 || v.BlockSize&(v.BlockSize-1) != 0:
		return fmt.Errorf("block size %d", v.BlockSize)
	case v.DataBlocks == 0:
		return errors.New("no data blocks")
	case v.Algorithm == "" || strings.ContainsAny(v.Algorithm, " \n"):
		return fmt.Errorf("algorithm %q", v.Algorithm)
	case len(v.RootHash) == 0:
		return errors.New("no root hash")
	case len(v.Salt) > 256:
		return fmt.Errorf("salt of %d bytes", len(v.Salt))
	}
	for _, o := range v.Options {
		if o == "" || strings.ContainsAny(o, " \n") {
			return fmt.Errorf("option %q", o)
		}
	}
	return nil
}

// Sectors is the size of the verity device in 512-byte sectors.
func (v Verity) Sectors() uint64 { return v.DataBlocks * uint64(v.BlockSize) / 512 }

// MapVerity creates the read-only verity device name, activates it and
// makes its node, /dev/mapper/<name>. The kernel checks the table (it
// refuses a target that is not read-only, a hash start inside the data, a
// root hash of the wrong length) but reads no block yet: every block,
// the first included, is verified when it is read. On failure nothing is
// left behind.
func (c *Control) MapVerity(name, uuid string, v Verity) (string, error) {
	if err := v.check(); err != nil {
		return "", fmt.Errorf("devmapper: verity target for %s: bad %w", name, err)
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
	t := Target{Start: 0, Length: v.Sectors(), Type: "verity", Params: v.Params()}
	if err := c.load(name, []Target{t}, flagReadOnly); err != nil {
		return undo(err)
	}
	if err := c.Resume(name); err != nil {
		return undo(err)
	}
	node := filepath.Join(filepath.Dir(ControlPath), name)
	os.Remove(node)
	if err := unix.Mknod(node, unix.S_IFBLK|0o400, int(dev)); err != nil {
		return undo(fmt.Errorf("devmapper: making %s: %w", node, err))
	}
	return node, nil
}

// VerityStatus reads the verity target's status: "V" while every block
// read so far verified, "C" once one failed.
func (c *Control) VerityStatus(name string) (string, error) {
	st, err := c.Status(name)
	if err != nil {
		return "", err
	}
	if len(st) != 1 || st[0].Type != "verity" {
		return "", fmt.Errorf("devmapper: %s is not one verity target", name)
	}
	f := strings.Fields(st[0].Params)
	if len(f) == 0 {
		return "", fmt.Errorf("devmapper: %s: empty verity status", name)
	}
	return f[0], nil
}
