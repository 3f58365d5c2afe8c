package luks2

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// BinaryHeaderSize is the size of the fixed binary header that starts each
// of the two header copies; the JSON area follows it.
const BinaryHeaderSize = 4096

var (
	magicPrimary   = [6]byte{'L', 'U', 'K', 'S', 0xba, 0xbe}
	magicSecondary = [6]byte{'S', 'K', 'U', 'L', 0xba, 0xbe}
)

// hdrSizes are the header sizes (binary header plus JSON area) the
// specification allows. A reader that has lost the primary header looks
// for the secondary at each of these offsets, in this order.
var hdrSizes = []uint64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20}

// binaryHeader is the on-disk layout of the first 512 bytes of a header
// copy, big-endian; the remaining 3584 bytes are zero padding.
type binaryHeader struct {
	Magic       [6]byte
	Version     uint16
	HdrSize     uint64
	SeqID       uint64
	Label       [48]byte
	ChecksumAlg [32]byte
	Salt        [64]byte
	UUID        [40]byte
	Subsystem   [48]byte
	HdrOffset   uint64
	_           [184]byte
	Checksum    [64]byte
}

var errNoMagic = errors.New("no LUKS magic")

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func validHdrSize(n uint64) bool {
	for _, s := range hdrSizes {
		if s == n {
			return true
		}
	}
	return false
}

// encodeHeaderCopy returns one complete header copy (binary header and JSON
// area, hdrSize bytes) with its checksum filled in.
func encodeHeaderCopy(bh binaryHeader, jsonArea []byte) []byte {
	buf := make([]byte, bh.HdrSize)
	bh.Checksum = [64]byte{}
	var w bytes.Buffer
	binary.Write(&w, binary.BigEndian, &bh)
	copy(buf, w.Bytes())
	copy(buf[BinaryHeaderSize:], jsonArea)
	sum := sha256.Sum256(buf)
	copy(buf[binaryChecksumOffset:], sum[:])
	return buf
}

// binaryChecksumOffset is where the checksum field sits in the binary header.
const binaryChecksumOffset = 6 + 2 + 8 + 8 + 48 + 32 + 64 + 40 + 48 + 8 + 184

// readHeaderCopy reads and checks the header copy at off. want is the magic
// expected there. It returns the binary header and the JSON text.
func readHeaderCopy(r io.ReaderAt, off int64, want [6]byte) (binaryHeader, []byte, error) {
	var bh binaryHeader
	first := make([]byte, BinaryHeaderSize)
	if n, err := r.ReadAt(first, off); n != len(first) {
		return bh, nil, fmt.Errorf("reading %d bytes at offset %d: %w", len(first), off, orEOF(err))
	}
	binary.Read(bytes.NewReader(first), binary.BigEndian, &bh)
	if bh.Magic != want {
		if bh.Magic == magicPrimary || bh.Magic == magicSecondary {
			return bh, nil, fmt.Errorf("offset %d holds the other copy's magic %q", off, bh.Magic[:4])
		}
		return bh, nil, fmt.Errorf("%w at offset %d", errNoMagic, off)
	}
	if bh.Version != 2 {
		return bh, nil, fmt.Errorf("header version is %d; only LUKS2 (version 2) is supported", bh.Version)
	}
	if !validHdrSize(bh.HdrSize) {
		return bh, nil, fmt.Errorf("header size %d is not one the LUKS2 specification allows", bh.HdrSize)
	}
	if bh.HdrOffset != uint64(off) {
		return bh, nil, fmt.Errorf("header found at offset %d says it belongs at offset %d", off, bh.HdrOffset)
	}
	if alg := cstring(bh.ChecksumAlg[:]); alg != "sha256" {
		return bh, nil, fmt.Errorf("header checksum algorithm %q is not supported (only sha256)", alg)
	}
	buf := make([]byte, bh.HdrSize)
	copy(buf, first)
	if n, err := r.ReadAt(buf[BinaryHeaderSize:], off+BinaryHeaderSize); n != len(buf)-BinaryHeaderSize {
		return bh, nil, fmt.Errorf("reading the %d-byte JSON area at offset %d: %w", len(buf)-BinaryHeaderSize, off+BinaryHeaderSize, orEOF(err))
	}
	stored := bh.Checksum
	clear(buf[binaryChecksumOffset : binaryChecksumOffset+64])
	sum := sha256.Sum256(buf)
	if !bytes.Equal(sum[:], stored[:32]) {
		return bh, nil, fmt.Errorf("header checksum mismatch at offset %d (stored %x, computed %x)", off, stored[:32], sum[:])
	}
	area := buf[BinaryHeaderSize:]
	end := bytes.IndexByte(area, 0)
	if end < 0 {
		return bh, nil, fmt.Errorf("JSON area at offset %d is not NUL-terminated", off+BinaryHeaderSize)
	}
	return bh, area[:end], nil
}

func orEOF(err error) error {
	if err == nil {
		return io.ErrUnexpectedEOF
	}
	if err == io.EOF {
		return fmt.Errorf("device too short: %w", io.ErrUnexpectedEOF)
	}
	return err
}
