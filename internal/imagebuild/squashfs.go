package imagebuild

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// FileExtent returns where the first data block of the file at p (a path
// inside the image, "lib/postgresql/15/bin/postgres") lies in a squashfs
// image, and its stored (compressed) size. It reads just enough of the
// format for that: tests damage one program's bytes on the system image
// to prove dm-verity stops the node. Symbolic links are not followed.
func FileExtent(img, p string) (offset, length int64, err error) {
	f, err := os.Open(img)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sq, err := openSquashfs(f)
	if err != nil {
		return 0, 0, fmt.Errorf("squashfs: %s: %w", img, err)
	}
	ino, err := sq.inode(sq.root)
	if err != nil {
		return 0, 0, err
	}
	for _, name := range strings.Split(strings.Trim(p, "/"), "/") {
		if ino.dir == nil {
			return 0, 0, fmt.Errorf("squashfs: %s: a component before %q is not a directory", p, name)
		}
		ref, err := sq.lookup(ino.dir, name)
		if err != nil {
			return 0, 0, fmt.Errorf("squashfs: %s: %w", p, err)
		}
		if ino, err = sq.inode(ref); err != nil {
			return 0, 0, err
		}
	}
	if ino.file == nil {
		return 0, 0, fmt.Errorf("squashfs: %s is not a regular file", p)
	}
	if len(ino.file.sizes) == 0 {
		return 0, 0, fmt.Errorf("squashfs: %s has no full data block (it is in a fragment)", p)
	}
	return ino.file.start, int64(ino.file.sizes[0] &^ (1 << 24)), nil
}

type squashfs struct {
	r                    io.ReaderAt
	comp                 uint16
	blockSize            uint32
	root                 uint64
	inodeTable, dirTable int64
}

type sqInode struct {
	dir  *sqDir
	file *sqFile
}

type sqDir struct {
	block  uint32 // start of the listing's metadata block, from the directory table
	offset uint16
	size   uint32 // listing size + 3
}

type sqFile struct {
	start int64
	sizes []uint32
}

func openSquashfs(r io.ReaderAt) (*squashfs, error) {
	sb := make([]byte, 96)
	if _, err := r.ReadAt(sb, 0); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if le.Uint32(sb[0:]) != 0x73717368 || le.Uint16(sb[28:]) != 4 {
		return nil, errors.New("not a squashfs 4 image")
	}
	return &squashfs{r: r, comp: le.Uint16(sb[20:]), blockSize: le.Uint32(sb[12:]), root: le.Uint64(sb[32:]),
		inodeTable: int64(le.Uint64(sb[64:])), dirTable: int64(le.Uint64(sb[72:]))}, nil
}

// metadata reads the metadata stream from the block at pos, skipping skip
// bytes of it and returning n bytes, across blocks as needed.
func (sq *squashfs) metadata(pos int64, skip, n int) ([]byte, error) {
	var out []byte
	for len(out) < skip+n {
		hdr := make([]byte, 2)
		if _, err := sq.r.ReadAt(hdr, pos); err != nil {
			return nil, err
		}
		h := binary.LittleEndian.Uint16(hdr)
		size := int64(h & 0x7fff)
		raw := make([]byte, size)
		if _, err := sq.r.ReadAt(raw, pos+2); err != nil {
			return nil, err
		}
		if h&0x8000 == 0 {
			var err error
			if raw, err = sq.decompress(raw); err != nil {
				return nil, err
			}
		}
		out = append(out, raw...)
		pos += 2 + size
	}
	return out[skip : skip+n], nil
}

func (sq *squashfs) decompress(b []byte) ([]byte, error) {
	switch sq.comp {
	case 6:
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		return d.DecodeAll(b, nil)
	case 1:
		zr, err := zlib.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		return io.ReadAll(zr)
	}
	return nil, fmt.Errorf("compression %d is not read here (zstd and gzip are)", sq.comp)
}

// inode reads the inode a reference names (metadata block << 16 | offset).
func (sq *squashfs) inode(ref uint64) (*sqInode, error) {
	pos, off := sq.inodeTable+int64(ref>>16), int(ref&0xffff)
	le := binary.LittleEndian
	h, err := sq.metadata(pos, off, 16)
	if err != nil {
		return nil, err
	}
	typ := le.Uint16(h[0:])
	// The size of each kind's fixed part after the common header.
	fixed := map[uint16]int{1: 16, 8: 24, 2: 16, 9: 40}[typ]
	b, err := sq.metadata(pos, off, 16+fixed)
	if err != nil {
		return nil, err
	}
	switch typ {
	case 1: // basic directory
		return &sqInode{dir: &sqDir{block: le.Uint32(b[16:]), size: uint32(le.Uint16(b[24:])), offset: le.Uint16(b[26:])}}, nil
	case 8: // extended directory
		return &sqInode{dir: &sqDir{size: le.Uint32(b[20:]), block: le.Uint32(b[24:]), offset: le.Uint16(b[34:])}}, nil
	case 2, 9: // basic and extended regular file
		var start, size uint64
		var frag uint32
		hdr := 32
		if typ == 2 {
			start, frag, size = uint64(le.Uint32(b[16:])), le.Uint32(b[20:]), uint64(le.Uint32(b[28:]))
		} else {
			start, size, frag, hdr = le.Uint64(b[16:]), le.Uint64(b[24:]), le.Uint32(b[44:]), 56
		}
		count := size / uint64(sq.blockSize)
		if frag == 0xffffffff && size%uint64(sq.blockSize) != 0 {
			count++
		}
		lb, err := sq.metadata(pos, off+hdr, int(count)*4)
		if err != nil {
			return nil, err
		}
		f := &sqFile{start: int64(start)}
		for i := range int(count) {
			f.sizes = append(f.sizes, le.Uint32(lb[i*4:]))
		}
		return &sqInode{file: f}, nil
	default:
		return &sqInode{}, nil
	}
}

// lookup finds name in a directory listing and returns its inode reference.
func (sq *squashfs) lookup(d *sqDir, name string) (uint64, error) {
	if d.size <= 3 {
		return 0, fmt.Errorf("%q not found (empty directory)", name)
	}
	b, err := sq.metadata(sq.dirTable+int64(d.block), int(d.offset), int(d.size-3))
	if err != nil {
		return 0, err
	}
	le := binary.LittleEndian
	for len(b) >= 12 {
		count, start := int(le.Uint32(b[0:]))+1, le.Uint32(b[4:])
		b = b[12:]
		for range count {
			if len(b) < 8 {
				return 0, errors.New("truncated directory listing")
			}
			off, nameLen := le.Uint16(b[0:]), int(le.Uint16(b[6:]))+1
			if len(b) < 8+nameLen {
				return 0, errors.New("truncated directory listing")
			}
			if string(b[8:8+nameLen]) == name {
				return uint64(start)<<16 | uint64(off), nil
			}
			b = b[8+nameLen:]
		}
	}
	return 0, fmt.Errorf("%q not found", name)
}
