// Package verity writes and checks dm-verity hash trees in the standard
// on-disk format that the kernel's verity target and cryptsetup's
// veritysetup read: format (hash type) 1, SHA-256, 4096-byte data and hash
// blocks, a 512-byte superblock at the start of the hash area and the tree
// in the hash blocks after it, top level first.
//
// The format, as the kernel documentation
// (admin-guide/device-mapper/verity.rst) and cryptsetup's documentation
// describe it:
//
//   - Every data block is hashed as SHA-256(salt || block). Hash type 1
//     prepends the salt (type 0, Chrome OS's, appends it).
//   - A hash block holds 4096/32 = 128 digests, each in a 32-byte slot (a
//     digest padded with zeros to a power of two, which for SHA-256 is
//     its own size); the rest of the last block of a level is zeros.
//   - Level 0 hashes the data blocks; level i+1 hashes the blocks of level
//     i; there are as many levels as it takes to reach one block. On disk
//     the top level comes first, then the ones below it.
//   - The root hash is SHA-256(salt || the top level's one block). The
//     kernel gets it from the table, never from the disk: it is what binds
//     the image to the boot (the kernel command line, a signature).
//
// The superblock (little-endian) records what veritysetup needs to rebuild
// the table: "verity\0\0", version 1, hash type 1, a UUID, "sha256", the
// block sizes, the number of data blocks, the salt. It is not trusted by
// anyone who has the root hash: the root hash commits to the salt and the
// tree, so a superblock that disagrees with it cannot produce a matching
// top block (CheckRoot).
package verity

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const (
	// BlockSize is the data and hash block size this package writes and
	// accepts.
	BlockSize = 4096
	// DigestSize is the size of a SHA-256 digest.
	DigestSize = sha256.Size
	// SuperblockSize is the size of the superblock; it takes one hash
	// block on disk.
	SuperblockSize = 512
	// MaxSalt is the largest salt the superblock can hold.
	MaxSalt = 256
	// Algorithm is the hash algorithm's name in the superblock and the
	// table.
	Algorithm = "sha256"

	hashesPerBlock = BlockSize / DigestSize // 128, a power of two
	hashBits       = 7                      // log2(hashesPerBlock)
	maxLevels      = 63
)

var signature = [8]byte{'v', 'e', 'r', 'i', 't', 'y', 0, 0}

// Superblock is the verity superblock.
type Superblock struct {
	UUID       [16]byte
	DataBlocks uint64
	Salt       []byte
}

// MarshalBinary encodes the superblock in its 512 bytes.
func (s *Superblock) MarshalBinary() ([]byte, error) {
	if len(s.Salt) > MaxSalt {
		return nil, fmt.Errorf("verity: salt of %d bytes; at most %d", len(s.Salt), MaxSalt)
	}
	b := make([]byte, SuperblockSize)
	copy(b[0:8], signature[:])
	binary.LittleEndian.PutUint32(b[8:], 1)  // superblock version
	binary.LittleEndian.PutUint32(b[12:], 1) // hash type: salt prepended
	copy(b[16:32], s.UUID[:])
	copy(b[32:64], Algorithm)
	binary.LittleEndian.PutUint32(b[64:], BlockSize)
	binary.LittleEndian.PutUint32(b[68:], BlockSize)
	binary.LittleEndian.PutUint64(b[72:], s.DataBlocks)
	binary.LittleEndian.PutUint16(b[80:], uint16(len(s.Salt)))
	// 6 bytes of padding, then the salt field (256 bytes), then 168
	// bytes of padding.
	copy(b[88:], s.Salt)
	return b, nil
}

// ParseSuperblock decodes a superblock and refuses anything this package
// would not have written: another version, hash type, algorithm or block
// size, no data blocks, nonzero padding.
func ParseSuperblock(b []byte) (*Superblock, error) {
	if len(b) < SuperblockSize {
		return nil, fmt.Errorf("verity: superblock: %d bytes, need %d", len(b), SuperblockSize)
	}
	b = b[:SuperblockSize]
	if !bytes.Equal(b[0:8], signature[:]) {
		return nil, errors.New("verity: no verity superblock (signature is not \"verity\")")
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != 1 {
		return nil, fmt.Errorf("verity: superblock version %d; only 1 is known", v)
	}
	if t := binary.LittleEndian.Uint32(b[12:]); t != 1 {
		return nil, fmt.Errorf("verity: hash type %d; only 1 (salt prepended) is accepted", t)
	}
	alg := b[32:64]
	if !bytes.Equal(bytes.TrimRight(alg, "\x00"), []byte(Algorithm)) {
		return nil, fmt.Errorf("verity: algorithm %q; only %s is accepted", bytes.TrimRight(alg, "\x00"), Algorithm)
	}
	if d, h := binary.LittleEndian.Uint32(b[64:]), binary.LittleEndian.Uint32(b[68:]); d != BlockSize || h != BlockSize {
		return nil, fmt.Errorf("verity: block sizes %d (data) and %d (hash); only %d is accepted", d, h, BlockSize)
	}
	s := &Superblock{DataBlocks: binary.LittleEndian.Uint64(b[72:])}
	if s.DataBlocks == 0 || s.DataBlocks > 1<<48 {
		return nil, fmt.Errorf("verity: %d data blocks is out of range", s.DataBlocks)
	}
	n := int(binary.LittleEndian.Uint16(b[80:]))
	if n > MaxSalt {
		return nil, fmt.Errorf("verity: salt size %d is more than %d", n, MaxSalt)
	}
	if !allZero(b[82:88]) || !allZero(b[88+n:]) {
		return nil, errors.New("verity: superblock padding is not zero")
	}
	copy(s.UUID[:], b[16:32])
	s.Salt = append([]byte(nil), b[88:88+n]...)
	return s, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// levels returns, for a number of data blocks, the number of hash blocks
// of each level (level 0 first) and the block, counted from the start of
// the tree, at which each level begins (the top level at 0).
func levels(dataBlocks uint64) (size, start []uint64) {
	n := 0
	for n*hashBits < 64 && (dataBlocks-1)>>(uint(n)*hashBits) != 0 {
		n++
	}
	size = make([]uint64, n)
	start = make([]uint64, n)
	pos := uint64(0)
	for i := n - 1; i >= 0; i-- {
		shift := uint(i+1) * hashBits
		size[i] = (dataBlocks + (1 << shift) - 1) >> shift
		start[i] = pos
		pos += size[i]
	}
	return size, start
}

// HashBlocks is the number of tree blocks for dataBlocks data blocks (the
// superblock's block not counted).
func HashBlocks(dataBlocks uint64) uint64 {
	size, _ := levels(dataBlocks)
	var t uint64
	for _, s := range size {
		t += s
	}
	return t
}

// HashAreaSize is the size of the hash area: the superblock's block and
// the tree.
func HashAreaSize(dataBlocks uint64) int64 {
	return int64(1+HashBlocks(dataBlocks)) * BlockSize
}

func hashBlock(salt, block []byte) [DigestSize]byte {
	h := sha256.New()
	h.Write(salt)
	h.Write(block)
	var d [DigestSize]byte
	h.Sum(d[:0])
	return d
}

// Result describes a hash tree that Format wrote.
type Result struct {
	RootHash   [DigestSize]byte
	DataBlocks uint64
	// HashOffset is where the superblock starts on the hash device, in
	// bytes; the tree starts one block later.
	HashOffset int64
	// HashBytes is the size of the hash area, superblock included.
	HashBytes int64
}

// Format reads dataBlocks blocks from data, and writes the superblock at
// hashOffset in hash and the tree after it. hashOffset must be a multiple
// of the block size; data and hash may be the same file, with hashOffset
// at or after the data's end.
func Format(data io.ReaderAt, dataBlocks uint64, hash io.WriterAt, hashOffset int64, sb Superblock) (*Result, error) {
	if dataBlocks == 0 {
		return nil, errors.New("verity: no data blocks")
	}
	if hashOffset < 0 || hashOffset%BlockSize != 0 {
		return nil, fmt.Errorf("verity: hash offset %d is not a multiple of %d", hashOffset, BlockSize)
	}
	sb.DataBlocks = dataBlocks
	sbBytes, err := sb.MarshalBinary()
	if err != nil {
		return nil, err
	}
	size, start := levels(dataBlocks)
	treeStart := hashOffset + BlockSize
	// Each level is built in memory (a 128th of the level below; 240 KiB
	// of level 0 for 30 MiB of data) and written once.
	var below []byte // the level under the one being built, as blocks
	var root [DigestSize]byte
	buf := make([]byte, BlockSize)
	for lvl := 0; lvl < len(size); lvl++ {
		level := make([]byte, size[lvl]*BlockSize)
		var count uint64
		if lvl == 0 {
			count = dataBlocks
		} else {
			count = size[lvl-1]
		}
		for i := uint64(0); i < count; i++ {
			var blk []byte
			if lvl == 0 {
				if _, err := data.ReadAt(buf, int64(i)*BlockSize); err != nil {
					return nil, fmt.Errorf("verity: reading data block %d: %w", i, err)
				}
				blk = buf
			} else {
				blk = below[i*BlockSize : (i+1)*BlockSize]
			}
			d := hashBlock(sb.Salt, blk)
			copy(level[i*DigestSize:], d[:])
		}
		if _, err := hash.WriteAt(level, treeStart+int64(start[lvl])*BlockSize); err != nil {
			return nil, fmt.Errorf("verity: writing hash level %d: %w", lvl, err)
		}
		below = level
	}
	if len(size) == 0 {
		// One data block: the root hashes it directly.
		if _, err := data.ReadAt(buf, 0); err != nil {
			return nil, fmt.Errorf("verity: reading data block 0: %w", err)
		}
		root = hashBlock(sb.Salt, buf)
	} else {
		root = hashBlock(sb.Salt, below[:BlockSize])
	}
	if _, err := hash.WriteAt(sbBytes, hashOffset); err != nil {
		return nil, fmt.Errorf("verity: writing the superblock: %w", err)
	}
	// The superblock's block is padded with zeros up to the tree.
	if _, err := hash.WriteAt(make([]byte, BlockSize-SuperblockSize), hashOffset+SuperblockSize); err != nil {
		return nil, fmt.Errorf("verity: writing the superblock: %w", err)
	}
	return &Result{RootHash: root, DataBlocks: dataBlocks, HashOffset: hashOffset, HashBytes: HashAreaSize(dataBlocks)}, nil
}

// ReadSuperblock reads and parses the superblock at offset.
func ReadSuperblock(hash io.ReaderAt, offset int64) (*Superblock, error) {
	b := make([]byte, SuperblockSize)
	if _, err := hash.ReadAt(b, offset); err != nil {
		return nil, fmt.Errorf("verity: reading the superblock at %d: %w", offset, err)
	}
	return ParseSuperblock(b)
}

// ErrRootMismatch means the hash tree does not lead to the expected root
// hash: the image, its superblock or the root hash is not the one built
// together.
var ErrRootMismatch = errors.New("verity: the hash tree does not match the root hash")

// CheckRoot checks, with one block read, that the superblock and the top
// of the tree lead to root: SHA-256(salt || top block) == root. It is what
// a node does before it maps the image, so that a wrong image or a wrong
// root hash is refused before anything else happens; dm-verity checks
// every other block as it is read. data is needed only for an image of one
// block, whose root hashes the data block itself.
func CheckRoot(data, hash io.ReaderAt, hashOffset int64, sb *Superblock, root []byte) error {
	if len(root) != DigestSize {
		return fmt.Errorf("verity: root hash of %d bytes; SHA-256 has %d", len(root), DigestSize)
	}
	buf := make([]byte, BlockSize)
	size, _ := levels(sb.DataBlocks)
	var err error
	if len(size) == 0 {
		_, err = data.ReadAt(buf, 0)
	} else {
		_, err = hash.ReadAt(buf, hashOffset+BlockSize) // the top level's block
	}
	if err != nil {
		return fmt.Errorf("verity: reading the top of the tree: %w", err)
	}
	if d := hashBlock(sb.Salt, buf); !bytes.Equal(d[:], root) {
		return ErrRootMismatch
	}
	return nil
}

// Verify checks every block of data and of the tree against root, as
// `veritysetup verify` does. It returns the first mismatch it finds.
func Verify(data, hash io.ReaderAt, hashOffset int64, root []byte) (*Superblock, error) {
	sb, err := ReadSuperblock(hash, hashOffset)
	if err != nil {
		return nil, err
	}
	if err := CheckRoot(data, hash, hashOffset, sb, root); err != nil {
		return sb, err
	}
	size, start := levels(sb.DataBlocks)
	treeStart := hashOffset + BlockSize
	buf := make([]byte, BlockSize)
	parent := make([]byte, BlockSize)
	for lvl := 0; lvl < len(size); lvl++ {
		count := sb.DataBlocks
		if lvl > 0 {
			count = size[lvl-1]
		}
		for i := uint64(0); i < count; i++ {
			var off int64
			what := "data"
			if lvl == 0 {
				off = int64(i) * BlockSize
			} else {
				off = treeStart + int64(start[lvl-1]+i)*BlockSize
				what = fmt.Sprintf("hash level %d", lvl-1)
			}
			if _, err := readAt(data, hash, lvl, buf, off); err != nil {
				return sb, fmt.Errorf("verity: reading %s block %d: %w", what, i, err)
			}
			// The slot for block i is in block i/128 of this level.
			pOff := treeStart + int64(start[lvl]+i/hashesPerBlock)*BlockSize
			if _, err := hash.ReadAt(parent, pOff); err != nil {
				return sb, fmt.Errorf("verity: reading hash level %d: %w", lvl, err)
			}
			slot := (i % hashesPerBlock) * DigestSize
			if d := hashBlock(sb.Salt, buf); !bytes.Equal(d[:], parent[slot:slot+DigestSize]) {
				return sb, fmt.Errorf("verity: %s block %d does not match its hash", what, i)
			}
		}
		// The unused slots of each level's last block are zero.
		last := size[lvl] - 1
		if _, err := hash.ReadAt(parent, treeStart+int64(start[lvl]+last)*BlockSize); err != nil {
			return sb, err
		}
		if used := count - last*hashesPerBlock; !allZero(parent[used*DigestSize:]) {
			return sb, fmt.Errorf("verity: hash level %d: padding after the last digest is not zero", lvl)
		}
	}
	return sb, nil
}

func readAt(data, hash io.ReaderAt, lvl int, buf []byte, off int64) (int, error) {
	if lvl == 0 {
		return data.ReadAt(buf, off)
	}
	return hash.ReadAt(buf, off)
}
