package backup

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/bulwarkvm/bulwark/internal/secret"
)

// The pghoard/rohmu encrypted file format (docs/backup-format.md): magic,
// 16-bit length, RSA-OAEP-SHA1 wrapped AES-128 key, CTR counter block and
// HMAC key, the AES-128-CTR ciphertext, and HMAC-SHA256 over it.
const legacyMagic = "pghoa1"

// DecryptLegacy decrypts one pghoa1 file of size bytes from r with the
// private key and writes the plaintext to w. The tag covers the whole
// ciphertext, so it reads the input twice: once to verify, then, only if
// the tag matched, to decrypt. An empty file is the empty plaintext.
func DecryptLegacy(r io.ReaderAt, size int64, priv *rsa.PrivateKey, w io.Writer) error {
	if size == 0 {
		return nil
	}
	head := make([]byte, len(legacyMagic)+2)
	if size < int64(len(head)) {
		return fmt.Errorf("legacy: file of %d bytes is too short for a pghoa1 header", size)
	}
	if _, err := r.ReadAt(head, 0); err != nil {
		return err
	}
	if string(head[:len(legacyMagic)]) != legacyMagic {
		return errors.New("legacy: not a pghoa1 file (bad magic)")
	}
	keyLen := int64(binary.BigEndian.Uint16(head[len(legacyMagic):]))
	start := int64(len(head)) + keyLen
	if keyLen == 0 || start+sha256.Size > size {
		return fmt.Errorf("legacy: wrapped key length %d does not fit a file of %d bytes", keyLen, size)
	}
	wrapped := make([]byte, keyLen)
	if _, err := r.ReadAt(wrapped, int64(len(head))); err != nil {
		return err
	}
	plain, err := rsa.DecryptOAEP(sha1.New(), nil, priv, wrapped, nil)
	if err != nil {
		return errors.New("legacy: the wrapped key does not decrypt with this private key")
	}
	sec, err := secret.New(64)
	if err != nil {
		secret.Zero(plain)
		return err
	}
	defer sec.Destroy()
	if len(plain) != 64 {
		secret.Zero(plain)
		return fmt.Errorf("legacy: the wrapped key holds %d bytes, not 64", len(plain))
	}
	copy(sec.Bytes(), plain)
	secret.Zero(plain)
	k := sec.Bytes()
	ctLen := size - start - sha256.Size
	mac := hmac.New(sha256.New, k[32:64])
	if _, err := io.Copy(mac, io.NewSectionReader(r, start, ctLen)); err != nil {
		return err
	}
	tag := make([]byte, sha256.Size)
	if _, err := r.ReadAt(tag, start+ctLen); err != nil {
		return err
	}
	if !hmac.Equal(mac.Sum(nil), tag) {
		return errors.New("legacy: HMAC-SHA256 over the ciphertext does not match (file altered or truncated); nothing was written")
	}
	block, err := aes.NewCipher(k[:16])
	if err != nil {
		return err
	}
	sr := cipher.StreamReader{S: cipher.NewCTR(block, k[16:32]), R: io.NewSectionReader(r, start, ctLen)}
	_, err = io.Copy(w, sr)
	return err
}
