// Package luks2 reads and writes the LUKS2 on-disk format (both binary
// headers, the JSON metadata and its checksums, luks2 keyslots with the
// anti-forensic splitter, pbkdf2 digests, crypt segments), as specified in
// docs/luks2.md. It writes one layout only: the one bulwark uses for its
// ephemeral data volumes. It reads what cryptsetup writes and says plainly
// what it does not support.
package luks2

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// The layout Format writes; it is cryptsetup's default for LUKS2.
const (
	HeaderSize     = 16 << 10 // binary header + JSON area, per copy
	KeyslotsOffset = 2 * HeaderSize
	DataOffset     = 16 << 20 // first byte of the encrypted data
	KeyslotsSize   = DataOffset - KeyslotsOffset
	KeySize        = 64 // aes-xts-plain64 with two AES-256 keys
	Stripes        = 4000
	// Iterations is the pbkdf2 count for the keyslot and the digest: the
	// smallest cryptsetup accepts. The keyslot passphrase is 512 random
	// bits, which no amount of key stretching would make stronger; see
	// docs/luks2.md.
	Iterations = 1000
	Cipher     = "aes-xts-plain64"
	Hash       = "sha256"
	saltSize   = 32
)

// ErrNoHeader means neither header copy carries the LUKS magic: the device
// is blank, erased, or holds something else.
var ErrNoHeader = errors.New("no LUKS2 header")

// ErrWrongPassphrase means no keyslot opened with the passphrase given.
var ErrWrongPassphrase = errors.New("no keyslot opens with this passphrase")

// Header is a LUKS2 header as read from a device or as written by Format.
type Header struct {
	UUID      string
	Label     string
	Subsystem string
	SeqID     uint64
	HdrSize   uint64
	Meta      *Metadata
	// FromSecondary is set when the primary copy was unusable and the
	// secondary was used; PrimaryErr says why.
	FromSecondary bool
	PrimaryErr    error
	// SecondaryErr says why the secondary copy is unusable when the
	// primary was used (cryptsetup would repair it on its next write).
	SecondaryErr error
}

// Options tune Format. The zero value gives bulwark's layout with a fresh
// random UUID and 4096-byte sectors.
type Options struct {
	UUID       string    // canonical lowercase form; random when empty
	Label      string    // up to 47 bytes
	SectorSize int       // 512 or 4096 (0 means 4096)
	Rand       io.Reader // salts, AF stripes, UUID; crypto/rand when nil
}

// SectorSizeFor picks the encryption sector size for a device: 4096 bytes
// unless the data area is not a whole number of 4096-byte sectors or the
// device's logical blocks are larger than 4096 bytes (then 512, which every
// device can do).
func SectorSizeFor(devSize int64, logicalBlock int) int {
	if (devSize-DataOffset)%4096 == 0 && logicalBlock <= 4096 {
		return 4096
	}
	return 512
}

// Segment returns the one crypt segment a bulwark volume has, refusing
// headers this package cannot map correctly.
func (h *Header) Segment() (Segment, error) {
	if len(h.Meta.Config.Requirements) > 0 && string(h.Meta.Config.Requirements) != "{}" {
		return Segment{}, fmt.Errorf("luks2: header has requirements %s (such as an unfinished reencryption); not supported", h.Meta.Config.Requirements)
	}
	if len(h.Meta.Segments) != 1 {
		return Segment{}, fmt.Errorf("luks2: header has %d segments; only one is supported", len(h.Meta.Segments))
	}
	s, ok := h.Meta.Segments["0"]
	if !ok {
		return Segment{}, fmt.Errorf("luks2: the only segment is not segment 0")
	}
	if s.Type != "crypt" {
		return Segment{}, fmt.Errorf("luks2: segment 0 has type %q; only crypt is supported", s.Type)
	}
	if len(s.Integrity) > 0 {
		return Segment{}, fmt.Errorf("luks2: segment 0 uses dm-integrity; not supported")
	}
	return s, nil
}

// Format writes a complete LUKS2 header to dev for a device of devSize
// bytes: the keyslot area holding volumeKey split and encrypted under a key
// derived from passphrase, then the secondary and the primary header. It
// does not touch the data area.
func Format(dev io.WriterAt, devSize int64, volumeKey, passphrase []byte, o Options) (*Header, error) {
	if len(volumeKey) != KeySize {
		return nil, fmt.Errorf("luks2: volume key is %d bytes; %s needs %d", len(volumeKey), Cipher, KeySize)
	}
	if len(passphrase) == 0 {
		return nil, errors.New("luks2: empty keyslot passphrase")
	}
	sector := o.SectorSize
	if sector == 0 {
		sector = 4096
	}
	if sector != 512 && sector != 4096 {
		return nil, fmt.Errorf("luks2: sector size %d; 512 or 4096 are supported", sector)
	}
	if devSize < DataOffset+int64(sector) {
		return nil, fmt.Errorf("luks2: device of %d bytes is too small: the header takes %d bytes and the data area needs at least one %d-byte sector", devSize, DataOffset, sector)
	}
	if (devSize-DataOffset)%int64(sector) != 0 {
		return nil, fmt.Errorf("luks2: data area of %d bytes is not a multiple of the %d-byte sector size", devSize-DataOffset, sector)
	}
	if len(o.Label) > 47 {
		return nil, fmt.Errorf("luks2: label is %d bytes; the limit is 47", len(o.Label))
	}
	rnd := o.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	id := o.UUID
	if id == "" {
		var err error
		if id, err = randomUUID(rnd); err != nil {
			return nil, fmt.Errorf("luks2: drawing a UUID: %w", err)
		}
	} else if err := checkUUID(id); err != nil {
		return nil, fmt.Errorf("luks2: %w", err)
	}

	ks, err := writeKeyslot(dev, rnd, volumeKey, passphrase)
	if err != nil {
		return nil, err
	}
	dg, err := makeDigest(rnd, volumeKey)
	if err != nil {
		return nil, err
	}
	meta := &Metadata{
		Keyslots: map[string]Keyslot{"0": ks},
		Tokens:   map[string]json.RawMessage{},
		Segments: map[string]Segment{"0": {
			Type:       "crypt",
			Offset:     DataOffset,
			Size:       "dynamic",
			IVTweak:    0,
			Encryption: Cipher,
			SectorSize: sector,
		}},
		Digests: map[string]Digest{"0": dg},
		Config:  Config{JSONSize: HeaderSize - BinaryHeaderSize, KeyslotsSize: KeyslotsSize},
	}
	h := &Header{UUID: id, Label: o.Label, SeqID: 1, HdrSize: HeaderSize, Meta: meta}
	if err := writeHeaders(dev, rnd, h); err != nil {
		return nil, err
	}
	if s, ok := dev.(interface{ Sync() error }); ok {
		if err := s.Sync(); err != nil {
			return nil, fmt.Errorf("luks2: flushing the header: %w", err)
		}
	}
	return h, nil
}

// writeHeaders writes the secondary copy and then the primary, so that a
// crash in between leaves at most one copy (the new secondary) valid.
func writeHeaders(dev io.WriterAt, rnd io.Reader, h *Header) error {
	text, err := json.Marshal(h.Meta)
	if err != nil {
		return fmt.Errorf("luks2: encoding metadata: %w", err)
	}
	if len(text) >= int(h.HdrSize-BinaryHeaderSize) {
		return fmt.Errorf("luks2: metadata of %d bytes does not fit the JSON area", len(text))
	}
	for _, c := range []struct {
		magic [6]byte
		off   uint64
	}{{magicSecondary, h.HdrSize}, {magicPrimary, 0}} {
		bh := binaryHeader{Magic: c.magic, Version: 2, HdrSize: h.HdrSize, SeqID: h.SeqID, HdrOffset: c.off}
		copy(bh.Label[:], h.Label)
		copy(bh.ChecksumAlg[:], "sha256")
		copy(bh.UUID[:], h.UUID)
		copy(bh.Subsystem[:], h.Subsystem)
		if _, err := io.ReadFull(rnd, bh.Salt[:]); err != nil {
			return fmt.Errorf("luks2: drawing a header salt: %w", err)
		}
		buf := encodeHeaderCopy(bh, text)
		if _, err := dev.WriteAt(buf, int64(c.off)); err != nil {
			return fmt.Errorf("luks2: writing the header copy at offset %d: %w", c.off, err)
		}
	}
	return nil
}

// Read reads the LUKS2 header of dev. A damaged primary copy falls back to
// the secondary (FromSecondary and PrimaryErr say so); of two valid copies
// the one with the higher sequence number wins. A device with no LUKS magic
// anywhere gives an error wrapping ErrNoHeader.
func Read(dev io.ReaderAt) (*Header, error) {
	pb, ptext, perr := readHeaderCopy(dev, 0, magicPrimary)
	var pmeta *Metadata
	if perr == nil {
		pmeta, perr = parseMetadata(ptext, pb.HdrSize)
	}
	// Find the secondary: right after a valid primary, or, when the
	// primary is lost, at each offset the specification allows.
	offsets := hdrSizes
	if pmeta != nil {
		offsets = []uint64{pb.HdrSize}
	}
	var (
		sb    binaryHeader
		smeta *Metadata
		serr  error
	)
	for _, off := range offsets {
		b, text, err := readHeaderCopy(dev, int64(off), magicSecondary)
		if err == nil {
			var m *Metadata
			if m, err = parseMetadata(text, b.HdrSize); err == nil {
				sb, smeta, serr = b, m, nil
				break
			}
		}
		if serr == nil || pmeta != nil {
			serr = err
		}
	}
	switch {
	case pmeta != nil && (smeta == nil || sb.SeqID <= pb.SeqID):
		h := newHeader(pb, pmeta)
		if smeta == nil {
			h.SecondaryErr = serr
		}
		return h, nil
	case smeta != nil:
		h := newHeader(sb, smeta)
		h.FromSecondary = true
		h.PrimaryErr = perr
		if perr == nil {
			h.PrimaryErr = fmt.Errorf("primary sequence number %d is older than the secondary's %d", pb.SeqID, sb.SeqID)
		}
		return h, nil
	}
	if pb.Magic != magicPrimary && pb.Magic != magicSecondary && isNoMagic(serr) {
		return nil, fmt.Errorf("luks2: %w (no magic in the primary or at any secondary offset)", ErrNoHeader)
	}
	return nil, fmt.Errorf("luks2: no valid header copy: primary: %v; secondary: %v", perr, serr)
}

func isNoMagic(err error) bool {
	return err == nil || errors.Is(err, errNoMagic) || errors.Is(err, io.ErrUnexpectedEOF)
}

func newHeader(b binaryHeader, m *Metadata) *Header {
	return &Header{
		UUID:      cstring(b.UUID[:]),
		Label:     cstring(b.Label[:]),
		Subsystem: cstring(b.Subsystem[:]),
		SeqID:     b.SeqID,
		HdrSize:   b.HdrSize,
		Meta:      m,
	}
}

func randomUUID(rnd io.Reader) (string, error) {
	var u [16]byte
	if _, err := io.ReadFull(rnd, u[:]); err != nil {
		return "", err
	}
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

func checkUUID(s string) error {
	if len(s) != 36 {
		return fmt.Errorf("UUID %q is not in the canonical 36-character form", s)
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return fmt.Errorf("UUID %q is not in the canonical form", s)
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return fmt.Errorf("UUID %q has %q; want lowercase hex", s, c)
			}
		}
	}
	return nil
}

// keyslotIDs lists keyslot ids by priority (2 high, 1 normal, 0 ignored
// unless asked for by id), then by number, as cryptsetup tries them.
func (h *Header) keyslotIDs() []string {
	var high, normal []string
	for _, id := range sortedKeys(h.Meta.Keyslots) {
		p := 1
		if h.Meta.Keyslots[id].Priority != nil {
			p = *h.Meta.Keyslots[id].Priority
		}
		switch p {
		case 2:
			high = append(high, id)
		case 1:
			normal = append(normal, id)
		}
	}
	return append(high, normal...)
}
