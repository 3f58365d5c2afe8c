package luks2

import (
	"encoding/binary"
	"hash"
	"io"
)

// The anti-forensic splitter (LUKS1 "af" type, reused by LUKS2) stores a
// key of n bytes as stripes*n bytes that all must be read back to recover
// it, so that destroying any small part of a keyslot destroys the key.

// diffuse replaces buf with H(0||buf[0:d]) || H(1||buf[d:2d]) || ..., each
// piece truncated to the length of its input, where d is the hash size.
func diffuse(h hash.Hash, buf []byte) {
	d := h.Size()
	var idx [4]byte
	var sum []byte
	for i := 0; i*d < len(buf); i++ {
		end := min((i+1)*d, len(buf))
		h.Reset()
		binary.BigEndian.PutUint32(idx[:], uint32(i))
		h.Write(idx[:])
		h.Write(buf[i*d : end])
		sum = h.Sum(sum[:0])
		copy(buf[i*d:end], sum)
	}
	clear(sum)
}

// afSplit writes the split form of key into dst (len(key)*stripes bytes),
// drawing the random stripes from rnd.
func afSplit(h hash.Hash, rnd io.Reader, key []byte, stripes int, dst []byte) error {
	n := len(key)
	d := make([]byte, n)
	defer clear(d)
	for i := 0; i < stripes-1; i++ {
		s := dst[i*n : (i+1)*n]
		if _, err := io.ReadFull(rnd, s); err != nil {
			return err
		}
		for j := range d {
			d[j] ^= s[j]
		}
		diffuse(h, d)
	}
	last := dst[(stripes-1)*n : stripes*n]
	for j := range last {
		last[j] = d[j] ^ key[j]
	}
	return nil
}

// afMerge recovers the key (len(key) bytes) from its split form.
func afMerge(h hash.Hash, src []byte, stripes int, key []byte) {
	n := len(key)
	clear(key)
	for i := 0; i < stripes-1; i++ {
		s := src[i*n : (i+1)*n]
		for j := range key {
			key[j] ^= s[j]
		}
		diffuse(h, key)
	}
	last := src[(stripes-1)*n : stripes*n]
	for j := range key {
		key[j] ^= last[j]
	}
}
