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
	mac.Reset()
	mac.Write(c.digest[:])
	var idx [9]byte
	binary.BigEndian.PutUint64(idx[:8], i)
	if final {
		idx[8] = 1
	}
	mac.Write(idx[:])
	mac.Write(ct)
	return mac.Sum(out)
}

// seal encrypts buf[:n] in place and appends its tag; buf needs room for
// n+tagLen bytes. It returns the sealed chunk.
func (c *chunker) seal(mac hash.Hash, i uint64, final bool, buf []byte, n int) []byte {
	cipher.NewCTR(c.block, c.counter(i)).XORKeyStream(buf[:n], buf[:n])
	return c.tag(mac, i, final, buf[:n], buf[:n])
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
// time and only then decrypts it in place. It returns the plaintext.
func (c *chunker) open(mac hash.Hash, i uint64, final bool, sealed []byte) ([]byte, error) {
	if len(sealed) < tagLen {
		return nil, &errTag{i, "the segment ends inside this chunk's tag (truncated)"}
	}
	ct, want := sealed[:len(sealed)-tagLen], sealed[len(sealed)-tagLen:]
	var sum [tagLen]byte
	if !hmac.Equal(c.tag(mac, i, final, ct, sum[:0]), want) {
		// Tell a cut or an extension from other damage: the tag would
		// verify with the other value of the final flag.
		if hmac.Equal(c.tag(mac, i, !final, ct, sum[:0]), want) {
			if final {
				return nil, &errTag{i, "the segment ends here but this chunk is not its final chunk (truncated)"}
			}
			return nil, &errTag{i, "data follows the segment's final chunk"}
		}
		return nil, &errTag{i, "authentication failed (altered, reordered, or from another segment or backup)"}
	}
	cipher.NewCTR(c.block, c.counter(i)).XORKeyStream(ct, ct)
	return ct, nil
}
