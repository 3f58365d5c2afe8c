// Package backup holds the backup encryptor: segments sealed with a fresh
// secret each, wrapped by the service's RSA-3072 key, AES-256-CTR and
// HMAC-SHA256 per chunk (docs/backup-format.md), and backups made of
// segments plus a manifest.
package backup

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// The segment header, docs/backup-format.md.
const (
	magic       = "BWBACKUP"
	version     = 1
	wrappedLen  = 384 // RSA-3072
	headerLen   = 66 + wrappedLen
	tagLen      = 32
	encKeyLen   = 32
	macKeyLen   = 64
	nonceLen    = 16
	secretLen   = encKeyLen + macKeyLen + nonceLen
	minChunkLog = 16
	maxChunkLog = 24
	oaepLabel   = "bulwark backup segment v1"

	// ManifestIndex is the segment index of a manifest.
	ManifestIndex = 0xFFFFFFFF
	// DefaultChunkLog gives 1 MiB chunks.
	DefaultChunkLog = 20
)

// Kind says what a segment holds.
type Kind uint8

const (
	KindData     Kind = 1
	KindManifest Kind = 2
)

// KeyID is SHA-256 of a public key's PKIX DER encoding.
type KeyID [32]byte

func (k KeyID) String() string { return hex.EncodeToString(k[:]) }

// BackupID names one backup; every object of it carries the same id.
type BackupID [16]byte

func (b BackupID) String() string { return hex.EncodeToString(b[:]) }

// ParseBackupID reads the hex form of a backup id.
func ParseBackupID(s string) (BackupID, error) {
	var id BackupID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("backup: %q is not a backup id (32 hex digits)", s)
	}
	copy(id[:], b)
	return id, nil
}

// Header is a segment header without its wrapped secret.
type Header struct {
	Kind     Kind
	ChunkLog uint8 // chunk size as a power of two
	KeyID    KeyID
	Backup   BackupID
	Index    uint32
}

// ChunkSize is the plaintext bytes of every chunk but the last.
func (h Header) ChunkSize() int { return 1 << h.ChunkLog }

func (h Header) check() error {
	if h.Kind != KindData && h.Kind != KindManifest {
		return fmt.Errorf("backup: header kind %d is neither data (1) nor manifest (2)", h.Kind)
	}
	if h.ChunkLog < minChunkLog || h.ChunkLog > maxChunkLog {
		return fmt.Errorf("backup: header chunk size 2^%d is outside 2^%d to 2^%d", h.ChunkLog, minChunkLog, maxChunkLog)
	}
	if (h.Kind == KindManifest) != (h.Index == ManifestIndex) {
		return fmt.Errorf("backup: header index %d does not fit kind %d", h.Index, h.Kind)
	}
	return nil
}

// marshal writes the header with its wrapped secret.
func (h Header) marshal(wrapped []byte) []byte {
	b := make([]byte, headerLen)
	copy(b, magic)
	b[8] = version
	b[9] = byte(h.Kind)
	b[10] = h.ChunkLog
	copy(b[12:44], h.KeyID[:])
	copy(b[44:60], h.Backup[:])
	binary.BigEndian.PutUint32(b[60:64], h.Index)
	binary.BigEndian.PutUint16(b[64:66], wrappedLen)
	copy(b[66:], wrapped)
	return b
}

// ErrNotSegment means the input does not start with a segment header.
var ErrNotSegment = errors.New("backup: not a bulwark backup segment (bad magic)")

// parseHeader reads a header; it returns the wrapped secret separately.
func parseHeader(b []byte) (Header, []byte, error) {
	var h Header
	if len(b) < headerLen {
		if len(b) == 0 {
			return h, nil, errors.New("backup: empty segment (no header)")
		}
		return h, nil, fmt.Errorf("backup: segment truncated inside its header (%d of %d bytes)", len(b), headerLen)
	}
	if string(b[:8]) != magic {
		return h, nil, ErrNotSegment
	}
	if b[8] != version {
		return h, nil, fmt.Errorf("backup: header version %d is not %d", b[8], version)
	}
	h.Kind = Kind(b[9])
	h.ChunkLog = b[10]
	if b[11] != 0 {
		return h, nil, fmt.Errorf("backup: header reserved byte is %d, not 0", b[11])
	}
	copy(h.KeyID[:], b[12:44])
	copy(h.Backup[:], b[44:60])
	h.Index = binary.BigEndian.Uint32(b[60:64])
	if n := binary.BigEndian.Uint16(b[64:66]); n != wrappedLen {
		return h, nil, fmt.Errorf("backup: header wrapped-secret length %d is not %d (RSA-3072)", n, wrappedLen)
	}
	if err := h.check(); err != nil {
		return h, nil, err
	}
	return h, b[66:headerLen], nil
}

// headerDigest is H in the format: every chunk tag covers it.
func headerDigest(hdr []byte) [32]byte { return sha256.Sum256(hdr) }
