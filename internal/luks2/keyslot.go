package luks2

import (
	"crypto/aes"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/xts"

	"github.com/bulwarkvm/bulwark/internal/secret"
)

// areaSectorSize is the sector size the keyslot area is encrypted with;
// the IV (plain64) is the sector number counted from the area's start.
const areaSectorSize = 512

func afSize(keySize, stripes int) int { return keySize * stripes }

func roundUp(n, to int) int { return (n + to - 1) / to * to }

// writeKeyslot splits volumeKey, encrypts the split material with a key
// derived from passphrase and writes it at KeyslotsOffset. Every
// intermediate that reveals the key lives in locked memory.
func writeKeyslot(dev io.WriterAt, rnd io.Reader, volumeKey, passphrase []byte) (Keyslot, error) {
	salt := make([]byte, saltSize)
	if _, err := io.ReadFull(rnd, salt); err != nil {
		return Keyslot{}, fmt.Errorf("luks2: drawing the keyslot salt: %w", err)
	}
	size := afSize(KeySize, Stripes)
	areaSize := roundUp(size, 4096)
	material, err := secret.New(areaSize)
	if err != nil {
		return Keyslot{}, fmt.Errorf("luks2: %w", err)
	}
	defer material.Destroy()
	buf := material.Bytes()
	h, _ := hashByName(Hash)
	if err := afSplit(h(), rnd, volumeKey, Stripes, buf[:size]); err != nil {
		return Keyslot{}, fmt.Errorf("luks2: anti-forensic split: %w", err)
	}
	// The tail of the area past the split key is filler; random, so the
	// area gives away nothing about where the key material ends.
	if _, err := io.ReadFull(rnd, buf[size:]); err != nil {
		return Keyslot{}, fmt.Errorf("luks2: filling the keyslot area: %w", err)
	}
	if err := cryptArea(buf, passphrase, salt, Iterations, Hash, KeySize, true); err != nil {
		return Keyslot{}, err
	}
	if _, err := dev.WriteAt(buf, KeyslotsOffset); err != nil {
		return Keyslot{}, fmt.Errorf("luks2: writing the keyslot area: %w", err)
	}
	return Keyslot{
		Type:    "luks2",
		KeySize: KeySize,
		AF:      AF{Type: "luks1", Stripes: Stripes, Hash: Hash},
		Area: Area{
			Type:       "raw",
			Offset:     KeyslotsOffset,
			Size:       U64(areaSize),
			Encryption: Cipher,
			KeySize:    KeySize,
		},
		KDF: KDF{Type: "pbkdf2", Hash: Hash, Iterations: Iterations, Salt: base64.StdEncoding.EncodeToString(salt)},
	}, nil
}

// cryptArea encrypts or decrypts buf in place with aes-xts-plain64 under a
// pbkdf2 key of the area's key size.
func cryptArea(buf, passphrase, salt []byte, iter int, hashName string, keySize int, encrypt bool) error {
	h, err := hashByName(hashName)
	if err != nil {
		return fmt.Errorf("luks2: keyslot kdf: %w", err)
	}
	key, err := secret.New(keySize)
	if err != nil {
		return fmt.Errorf("luks2: %w", err)
	}
	defer key.Destroy()
	pbkdf2Into(h, passphrase, salt, iter, key.Bytes())
	c, err := xts.NewCipher(aes.NewCipher, key.Bytes())
	if err != nil {
		return fmt.Errorf("luks2: keyslot cipher: %w", err)
	}
	for i := 0; i*areaSectorSize < len(buf); i++ {
		s := buf[i*areaSectorSize : (i+1)*areaSectorSize]
		if encrypt {
			c.Encrypt(s, s, uint64(i))
		} else {
			c.Decrypt(s, s, uint64(i))
		}
	}
	return nil
}

func makeDigest(rnd io.Reader, volumeKey []byte) (Digest, error) {
	salt := make([]byte, saltSize)
	if _, err := io.ReadFull(rnd, salt); err != nil {
		return Digest{}, fmt.Errorf("luks2: drawing the digest salt: %w", err)
	}
	h, _ := hashByName(Hash)
	sum := make([]byte, 32)
	pbkdf2Into(h, volumeKey, salt, Iterations, sum)
	return Digest{
		Type:       "pbkdf2",
		Keyslots:   []string{"0"},
		Segments:   []string{"0"},
		Hash:       Hash,
		Iterations: Iterations,
		Salt:       base64.StdEncoding.EncodeToString(salt),
		Digest:     base64.StdEncoding.EncodeToString(sum),
	}, nil
}

// Unlock recovers the volume key into key (which must have the keyslot's
// key size) from the first keyslot that passphrase opens, trying them in
// priority order. It returns the keyslot's id. Keyslots this package
// cannot open (argon2 KDFs, other ciphers) are named in the error when no
// supported keyslot opens.
func (h *Header) Unlock(dev io.ReaderAt, passphrase, key []byte) (string, error) {
	var unsupported []string
	for _, id := range h.keyslotIDs() {
		err := h.unlockSlot(dev, id, passphrase, key)
		if err == nil {
			return id, nil
		}
		var u unsupportedError
		switch {
		case errors.As(err, &u):
			unsupported = append(unsupported, err.Error())
		case errors.Is(err, ErrWrongPassphrase):
		default:
			return "", err
		}
	}
	clear(key)
	if len(unsupported) > 0 {
		return "", fmt.Errorf("luks2: %w among the supported keyslots; not tried: %s", ErrWrongPassphrase, strings.Join(unsupported, "; "))
	}
	return "", fmt.Errorf("luks2: %w", ErrWrongPassphrase)
}

type unsupportedError struct{ msg string }

func (e unsupportedError) Error() string { return e.msg }

// maxIterations bounds a keyslot's PBKDF2 iterations for Unlock.
const maxIterations = 1 << 26

func (h *Header) unlockSlot(dev io.ReaderAt, id string, passphrase, key []byte) error {
	ks := h.Meta.Keyslots[id]
	switch {
	case ks.Type != "luks2":
		return unsupportedError{fmt.Sprintf("keyslot %s has type %q", id, ks.Type)}
	case ks.KDF.Type != "pbkdf2":
		return unsupportedError{fmt.Sprintf("keyslot %s uses the %s KDF (only pbkdf2 is supported)", id, ks.KDF.Type)}
	case ks.AF.Type != "luks1":
		return unsupportedError{fmt.Sprintf("keyslot %s uses the %q anti-forensic splitter", id, ks.AF.Type)}
	case ks.Area.Type != "raw":
		return unsupportedError{fmt.Sprintf("keyslot %s has a %q area", id, ks.Area.Type)}
	case ks.Area.Encryption != Cipher || (ks.Area.KeySize != 32 && ks.Area.KeySize != 64):
		return unsupportedError{fmt.Sprintf("keyslot %s area is encrypted with %s, %d-bit key (only %s with 256 or 512 bits is supported)", id, ks.Area.Encryption, ks.Area.KeySize*8, Cipher)}
	}
	if len(key) != ks.KeySize {
		return fmt.Errorf("luks2: keyslot %s holds a %d-byte key; buffer is %d bytes", id, ks.KeySize, len(key))
	}
	// Bounds from the header are untrusted: a stripe count whose product
	// with the key size wraps would slice out of range, and an iteration
	// count in the billions would hang the caller. cryptsetup always
	// writes 4000 stripes; maxIterations is far above any benchmark's.
	if ks.AF.Stripes != 4000 || ks.KDF.Iterations < 1 || ks.KDF.Iterations > maxIterations {
		return fmt.Errorf("luks2: keyslot %s has %d stripes and %d iterations (want 4000 stripes and 1 to %d iterations)", id, ks.AF.Stripes, ks.KDF.Iterations, maxIterations)
	}
	afh, err := hashByName(ks.AF.Hash)
	if err != nil {
		return unsupportedError{fmt.Sprintf("keyslot %s splitter: %v", id, err)}
	}
	salt, err := base64.StdEncoding.DecodeString(ks.KDF.Salt)
	if err != nil {
		return fmt.Errorf("luks2: keyslot %s salt is not base64: %w", id, err)
	}
	size := afSize(ks.KeySize, ks.AF.Stripes)
	n := roundUp(size, areaSectorSize)
	if uint64(n) > uint64(ks.Area.Size) {
		return fmt.Errorf("luks2: keyslot %s area of %d bytes cannot hold %d bytes of split key", id, ks.Area.Size, n)
	}
	material, err := secret.New(n)
	if err != nil {
		return fmt.Errorf("luks2: %w", err)
	}
	defer material.Destroy()
	buf := material.Bytes()
	if got, err := dev.ReadAt(buf, int64(ks.Area.Offset)); got != n {
		return fmt.Errorf("luks2: reading keyslot %s area: %w", id, orEOF(err))
	}
	if err := cryptArea(buf, passphrase, salt, ks.KDF.Iterations, ks.KDF.Hash, ks.Area.KeySize, false); err != nil {
		return err
	}
	afMerge(afh(), buf[:size], ks.AF.Stripes, key)
	ok, err := h.verifyKey(id, key)
	if err != nil {
		return err
	}
	if !ok {
		clear(key)
		return ErrWrongPassphrase
	}
	return nil
}

// verifyKey checks key against the digest that covers keyslot id.
func (h *Header) verifyKey(id string, key []byte) (bool, error) {
	for _, did := range sortedKeys(h.Meta.Digests) {
		d := h.Meta.Digests[did]
		covers := false
		for _, k := range d.Keyslots {
			covers = covers || k == id
		}
		if !covers {
			continue
		}
		if d.Type != "pbkdf2" {
			return false, unsupportedError{fmt.Sprintf("digest %s has type %q", did, d.Type)}
		}
		hf, err := hashByName(d.Hash)
		if err != nil {
			return false, unsupportedError{fmt.Sprintf("digest %s: %v", did, err)}
		}
		salt, err1 := base64.StdEncoding.DecodeString(d.Salt)
		want, err2 := base64.StdEncoding.DecodeString(d.Digest)
		if err1 != nil || err2 != nil || len(want) == 0 || d.Iterations < 1 {
			return false, fmt.Errorf("luks2: digest %s is malformed", did)
		}
		got := make([]byte, len(want))
		pbkdf2Into(hf, key, salt, d.Iterations, got)
		return subtle.ConstantTimeCompare(got, want) == 1, nil
	}
	return false, fmt.Errorf("luks2: no digest covers keyslot %s", id)
}
