package luks2

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"
)

func hashByName(name string) (func() hash.Hash, error) {
	switch name {
	case "sha256":
		return sha256.New, nil
	case "sha512":
		return sha512.New, nil
	case "sha1":
		return sha1.New, nil
	}
	return nil, fmt.Errorf("hash %q is not supported (sha1, sha256, sha512 are)", name)
}

// pbkdf2Into derives len(out) bytes into out (RFC 8018, section 5.2). It
// writes into a buffer the caller owns (locked memory for keys) because
// crypto/pbkdf2 takes the password as a string, which could never be
// zeroed. The HMAC state still holds pads derived from the password on the
// Go heap; they are short-lived and unreachable after return.
func pbkdf2Into(h func() hash.Hash, password, salt []byte, iter int, out []byte) {
	prf := hmac.New(h, password)
	size := prf.Size()
	u := make([]byte, size)
	t := make([]byte, size)
	var ctr [4]byte
	for block := 1; len(out) > 0; block++ {
		prf.Reset()
		prf.Write(salt)
		binary.BigEndian.PutUint32(ctr[:], uint32(block))
		prf.Write(ctr[:])
		u = prf.Sum(u[:0])
		copy(t, u)
		for i := 1; i < iter; i++ {
			prf.Reset()
			prf.Write(u)
			u = prf.Sum(u[:0])
			for j := range t {
				t[j] ^= u[j]
			}
		}
		out = out[copy(out, t):]
	}
	clear(u)
	clear(t)
}
