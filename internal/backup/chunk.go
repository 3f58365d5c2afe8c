package backup

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"math/big"
)

// chunker seals and opens the chunks of one segment. Its fields are read
// only, so the workers share it; each worker has its own HMAC.
type chunker struct {
	block    cipher.Block
	macKey   []byte // inside the segment's locked secret
	nonce    [nonceLen]byte
	digest   [32]byte // H, the header digest
	chunkLog uint8
}

func newChunker(secretBytes []byte, hdr []byte, chunkLog uint8) (*chunker, error) {
	block, err := aes.NewCipher(secretBytes[:encKeyLen])
	if err != nil {
		return nil, err
	}
	c := &chunker{block: block, macKey: secretBytes[encKeyLen : encKeyLen+macKeyLen], digest: headerDigest(hdr), chunkLog: chunkLog}
	copy(c.nonce[:], secretBytes[encKeyLen+macKeyLen:])
	return c, nil
}

func (c *chunker) newMAC() hash.Hash { return hmac.New(sha256.New, c.macKey) }

// counter returns the first counter block of chunk i: nonce + i·C/16.
func (c *chunker) counter(i uint64) []byte {
	n := new(big.Int).SetBytes(c.nonce[:])
	n.Add(n, new(big.Int).Lsh(new(big.Int).SetUint64(i), uint(c.chunkLog-4)))
	b := n.Bytes()
	out := make([]byte, 16)
	if len(b) > 16 {
		b = b[len(b)-16:] // mod 2^128
	}
	copy(out[16-len(b):], b)
	return out
}

func (c *chunker) tag(mac hash.Hash, i uint64, final bool, ct []byte, out []byte) []byte {
	c.begin(mac, i, final)
	mac.Write(ct)
	return mac.Sum(out)
}

// stride is how much of a chunk is encrypted (or decrypted) and MACed at
// a time: small enough that the bytes the cipher just wrote are still in
// the CPU's cache when the MAC reads them.
const stride = 32 << 10

// seal encrypts buf[:n] in place and appends its tag; buf needs room for
// n+tagLen bytes. It returns the sealed chunk.
func (c *chunker) seal(mac hash.Hash, i uint64, final bool, buf []byte, n int) []byte {
	c.begin(mac, i, final)
	ctr := cipher.NewCTR(c.block, c.counter(i))
	for off := 0; off < n; off += stride {
		p := buf[off:min(off+stride, n)]
		ctr.XORKeyStream(p, p)
		mac.Write(p)
	}
	return mac.Sum(buf[:n])
}

// begin starts a chunk's tag: H, the index and the final flag.
func (c *chunker) begin(mac hash.Hash, i uint64, final bool) {
	mac.Reset()
	mac.Write(c.digest[:])
	var idx [9]byte
	binary.BigEndian.PutUint64(idx[:8], i)
	if final {
		idx[8] = 1
	}
	mac.Write(idx[:])
}

// errTag is the tag failure of one chunk; the reader names the cause when
// it can tell (a cut or trailing data).
type errTag struct {
	index uint64
	cause string
}

func (e *errTag) Error() string {
	return fmt.Sprintf("backup: chunk %d: %s", e.index, e.cause)
}

// open checks the tag of a sealed chunk (ciphertext then tag) in constant
// time and returns the plaintext, decrypted in place. It MACs and decrypts
// a stride at a time (for the cache), so the plaintext exists inside the
// worker before the tag is checked; if the tag fails, that plaintext is
// wiped and nothing is returned, so no byte of an unverified chunk ever
// leaves the reader.
func (c *chunker) open(mac hash.Hash, i uint64, final bool, sealed []byte) ([]byte, error) {
	if len(sealed) < tagLen {
		return nil, &errTag{i, "the segment ends inside this chunk's tag (truncated)"}
	}
	ct, want := sealed[:len(sealed)-tagLen], sealed[len(sealed)-tagLen:]
	c.begin(mac, i, final)
	ctr := cipher.NewCTR(c.block, c.counter(i))
	for off := 0; off < len(ct); off += stride {
		p := ct[off:min(off+stride, len(ct))]
		mac.Write(p)
		ctr.XORKeyStream(p, p)
	}
	var sum [tagLen]byte
	if hmac.Equal(mac.Sum(sum[:0]), want) {
		return ct, nil
	}
	// Tell a cut or an extension from other damage: the tag would verify
	// with the other value of the final flag. The ciphertext is needed
	// again for that, so encrypt the wiped-out plaintext back first.
	cipher.NewCTR(c.block, c.counter(i)).XORKeyStream(ct, ct)
	other := hmac.Equal(c.tag(mac, i, !final, ct, sum[:0]), want)
	clear(ct)
	switch {
	case other && final:
		return nil, &errTag{i, "the segment ends here but this chunk is not its final chunk (truncated)"}
	case other:
		return nil, &errTag{i, "data follows the segment's final chunk"}
	}
	return nil, &errTag{i, "authentication failed (altered, reordered, or from another segment or backup)"}
}
