package luks2

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"testing"
)

// FuzzRead fuzzes the JSON metadata of a LUKS2 header and the checks on
// its keyslots, segments and digests. The fuzzer's bytes are the metadata
// text; the target wraps them in a primary and a secondary header copy
// with correct checksums (random bytes almost never pass the SHA-256
// checksum, so fuzzing whole headers stopped there), with their sequence
// numbers, optionally with bytes of the binary headers replaced (patch,
// before the checksum is computed) and optionally one copy damaged after
// it (mode). Read must never panic or hang, and a header it accepts must
// satisfy the layout rules of docs/luks2.md (restated here apart from
// Read's own checks), come from the right copy, and read back the same
// once written again.
func FuzzRead(f *testing.F) {
	for _, meta := range []string{bulwarkMeta(), cryptsetupMeta} {
		f.Add([]byte(meta), uint8(0), uint64(1), uint64(1), uint8(0), []byte{})
		f.Add([]byte(meta), uint8(0), uint64(2), uint64(3), uint8(0), []byte{})
		f.Add([]byte(meta), uint8(0), uint64(7), uint64(7), uint8(4), []byte{})     // primary damaged
		f.Add([]byte(meta), uint8(0), uint64(7), uint64(7), uint8(8), []byte{})     // secondary damaged
		f.Add([]byte(meta), uint8(0), uint64(1), uint64(1), uint8(1), []byte{0, 2}) // primary's version field rewritten
	}
	f.Add([]byte(`{"keyslots":{},"tokens":{},"segments":{},"digests":{},"config":{"json_size":"28672","keyslots_size":"0"}}`), uint8(1), uint64(1), uint64(1), uint8(0), []byte{})
	f.Fuzz(func(t *testing.T, meta []byte, size uint8, seqP, seqS uint64, mode uint8, patch []byte) {
		hdrSize := hdrSizes[int(size)%3] // 16, 32 or 64 KiB: larger copies only slow the fuzzer
		if len(meta) > int(hdrSize)-BinaryHeaderSize || len(patch) > binaryChecksumOffset-6 {
			return
		}
		dev := make([]byte, 2*hdrSize)
		primary, secondary := dev[:hdrSize], dev[hdrSize:]
		fillCopy(primary, magicPrimary, hdrSize, 0, seqP, meta, patch, mode&1 != 0)
		fillCopy(secondary, magicSecondary, hdrSize, hdrSize, seqS, meta, patch, mode&2 != 0)
		if mode&4 != 0 {
			primary[BinaryHeaderSize+int(seqP%uint64(hdrSize-BinaryHeaderSize))] ^= 0x20
		}
		if mode&8 != 0 {
			secondary[BinaryHeaderSize+int(seqS%uint64(hdrSize-BinaryHeaderSize))] ^= 0x20
		}
		h, err := Read(bytes.NewReader(dev))
		if err != nil {
			return
		}
		if err := layoutRules(h.Meta, h.HdrSize); err != nil {
			t.Fatalf("accepted a header that breaks the layout rules: %v\n%s", err, meta)
		}
		if mode&3 == 0 { // binary headers as written: which copy wins is known
			pOK, sOK := mode&4 == 0, mode&8 == 0
			switch {
			case pOK && sOK && seqS > seqP, !pOK && sOK:
				if !h.FromSecondary || h.SeqID != seqS {
					t.Fatalf("read the primary (seq %d) over the secondary (seq %d), primary damaged %v", seqP, seqS, !pOK)
				}
			case pOK && sOK, pOK && !sOK:
				if h.FromSecondary || h.SeqID != seqP {
					t.Fatalf("read the secondary (seq %d) over the primary (seq %d), secondary damaged %v", seqS, seqP, !sOK)
				}
				if !sOK && h.SecondaryErr == nil {
					t.Fatal("a damaged secondary copy is not reported")
				}
			default:
				t.Fatal("accepted a header with both copies damaged")
			}
		}
		if s, err := h.Segment(); err == nil {
			if s.Type != "crypt" || len(s.Integrity) > 0 || uint64(s.Offset) < 2*h.HdrSize+uint64(h.Meta.Config.KeyslotsSize) {
				t.Fatalf("Segment() returned a segment it should refuse: %+v", s)
			}
		}
		seen := map[string]bool{}
		for _, id := range h.keyslotIDs() {
			if _, ok := h.Meta.Keyslots[id]; !ok || seen[id] {
				t.Fatalf("keyslotIDs lists %q, which is not a keyslot or is listed twice", id)
			}
			seen[id] = true
		}
		// Written again, the header reads back the same.
		var out memDev
		if err := writeHeaders(&out, bytes.NewReader(make([]byte, 128)), h); err != nil {
			if bytes.Contains([]byte(err.Error()), []byte("does not fit")) {
				return // our encoding of the same metadata can be longer than the input's
			}
			t.Fatalf("an accepted header cannot be written again: %v", err)
		}
		h2, err := Read(bytes.NewReader(out.buf))
		if err != nil {
			t.Fatalf("an accepted header, written again, is refused: %v", err)
		}
		if h2.FromSecondary || h2.SecondaryErr != nil || h2.UUID != h.UUID || h2.Label != h.Label || h2.Subsystem != h.Subsystem || h2.SeqID != h.SeqID || h2.HdrSize != h.HdrSize {
			t.Fatalf("written again, the header reads back as %+v, not %+v", h2, h)
		}
		a, _ := json.Marshal(h.Meta)
		b, _ := json.Marshal(h2.Meta)
		if !bytes.Equal(a, b) {
			t.Fatalf("written again, the metadata reads back differently:\n%s\n%s", a, b)
		}
	})
}

// fillCopy writes one header copy into buf: the binary header (with patch
// over its fields after the magic, when set), the metadata text, and the
// checksum over both.
func fillCopy(buf []byte, magic [6]byte, hdrSize, off, seq uint64, text, patch []byte, patched bool) {
	bh := binaryHeader{Magic: magic, Version: 2, HdrSize: hdrSize, SeqID: seq, HdrOffset: off}
	copy(bh.ChecksumAlg[:], "sha256")
	copy(bh.UUID[:], "2b2b37b8-1e0c-4bba-9a8e-6d2b5cc1f7a0")
	copy(bh.Label[:], "fuzz")
	var w bytes.Buffer
	binary.Write(&w, binary.BigEndian, &bh)
	copy(buf, w.Bytes())
	if patched {
		copy(buf[6:binaryChecksumOffset], patch)
	}
	copy(buf[BinaryHeaderSize:], text)
	sum := sha256.Sum256(buf)
	copy(buf[binaryChecksumOffset:], sum[:])
}

// layoutRules restates the layout rules a readable header must keep: the
// metadata sizes agree with the binary header, keyslot areas lie inside
// the keyslots area without wrapping or overlapping, segments start after
// it on a sector boundary, digests name what exists.
func layoutRules(m *Metadata, hdrSize uint64) error {
	if m.Keyslots == nil || m.Tokens == nil || m.Segments == nil || m.Digests == nil {
		return fmt.Errorf("an object is missing")
	}
	if !validHdrSize(hdrSize) || uint64(m.Config.JSONSize) != hdrSize-BinaryHeaderSize {
		return fmt.Errorf("header size %d, json_size %d", hdrSize, m.Config.JSONSize)
	}
	ks := uint64(m.Config.KeyslotsSize)
	if ks%4096 != 0 || ks > math.MaxUint64-2*hdrSize {
		return fmt.Errorf("keyslots_size %d", ks)
	}
	lo, hi := 2*hdrSize, 2*hdrSize+ks
	type area struct {
		id          string
		start, size uint64
	}
	var areas []area
	for id, k := range m.Keyslots {
		if _, err := strconv.ParseUint(id, 10, 32); err != nil {
			return fmt.Errorf("keyslot id %q", id)
		}
		start, size := uint64(k.Area.Offset), uint64(k.Area.Size)
		if size == 0 || start < lo || start > hi || size > hi-start {
			return fmt.Errorf("keyslot %s area at %d, %d bytes, outside [%d, %d)", id, start, size, lo, hi)
		}
		areas = append(areas, area{id, start, size})
	}
	for i, a := range areas {
		for _, b := range areas[i+1:] {
			if a.start < b.start+b.size && b.start < a.start+a.size {
				return fmt.Errorf("keyslot areas %s and %s overlap", a.id, b.id)
			}
		}
	}
	for id, s := range m.Segments {
		if _, err := strconv.ParseUint(id, 10, 32); err != nil {
			return fmt.Errorf("segment id %q", id)
		}
		if uint64(s.Offset) < hi {
			return fmt.Errorf("segment %s at %d, before the end of the keyslots area %d", id, s.Offset, hi)
		}
		sector := uint64(s.SectorSize)
		if s.Type == "crypt" && sector != 512 && sector != 1024 && sector != 2048 && sector != 4096 {
			return fmt.Errorf("crypt segment %s with %d-byte sectors", id, s.SectorSize)
		}
		if s.SectorSize > 0 && uint64(s.Offset)%sector != 0 {
			return fmt.Errorf("segment %s at %d, not on a %d-byte sector", id, s.Offset, sector)
		}
		if _, err := strconv.ParseUint(s.Size, 10, 64); err != nil && s.Size != "dynamic" {
			return fmt.Errorf("segment %s size %q", id, s.Size)
		}
	}
	for id, d := range m.Digests {
		for _, k := range d.Keyslots {
			if _, ok := m.Keyslots[k]; !ok {
				return fmt.Errorf("digest %s names keyslot %s", id, k)
			}
		}
		for _, s := range d.Segments {
			if _, ok := m.Segments[s]; !ok {
				return fmt.Errorf("digest %s names segment %s", id, s)
			}
		}
	}
	return nil
}

// FuzzLayout fuzzes the layout checks directly: its bytes describe
// keyslot areas, segments and digests (offsets near the edges of the
// areas, sizes, sector sizes, ids, references, a few huge values for
// overflows), which it encodes as metadata inside a valid header pair.
// Read must accept the header exactly when the layout rules hold, and
// then return the metadata as written.
func FuzzLayout(f *testing.F) {
	f.Add(uint8(0), uint16(4088), int8(0), []byte{
		0, 0, 0, 0, 0, 0, 63, // keyslot 0 at the area's start, 63 × 4 KiB (Format's layout)
		1, 0, 1, 0, 0, 3, 0, 0, 0, 0, 0, // crypt segment 0 at the area's end, 4096-byte sectors, dynamic
		2, 0, 0, 0, // digest 0 over keyslot 0 and segment 0
	})
	f.Add(uint8(1), uint16(64), int8(0), []byte{
		0, 0, 0, 0, 0, 0, 8, // keyslot 0: 32 KiB at the start
		0, 1, 0, 0, 0x40, 0, 8, // keyslot 1 right after it
		0, 2, 0, 0, 0x50, 0, 8, // keyslot 2 overlapping keyslot 1
		1, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, // crypt segment 0, 512-byte sectors, 256 bytes
		2, 0, 1, 0, // digest 0 over keyslot 1
		2, 1, 5, 0, // digest 1 naming a keyslot that does not exist
	})
	f.Add(uint8(2), uint16(0x8001), int8(0), []byte{
		0, 3, 0, 0xff, 0, 0, 1, // keyslot 3 near 2^64
		1, 1, 0, 0xff, 2, 7, 2, 9, 0, 0, 0, // segment 1 near 2^64, 8192-byte sectors, size "-9"
	})
	f.Fuzz(func(t *testing.T, size uint8, slots uint16, jsonDelta int8, layout []byte) {
		hdrSize := hdrSizes[int(size)%3]
		m := decodeLayout(hdrSize, slots, jsonDelta, layout)
		text, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(text) >= int(hdrSize)-BinaryHeaderSize {
			return
		}
		dev := make([]byte, 2*hdrSize)
		fillCopy(dev[:hdrSize], magicPrimary, hdrSize, 0, 1, text, nil, false)
		fillCopy(dev[hdrSize:], magicSecondary, hdrSize, hdrSize, 1, text, nil, false)
		want := layoutRules(m, hdrSize)
		h, err := Read(bytes.NewReader(dev))
		switch {
		case err == nil && want != nil:
			t.Fatalf("accepted a header that breaks the layout rules (%v):\n%s", want, text)
		case err != nil && want == nil:
			t.Fatalf("refused a header that keeps the layout rules: %v\n%s", err, text)
		case err == nil:
			if got, _ := json.Marshal(h.Meta); !bytes.Equal(got, text) {
				t.Fatalf("the metadata reads back differently:\n%s\n%s", text, got)
			}
		}
	})
}

// decodeLayout turns fuzz bytes into metadata. keyslots_size is slots ×
// 4096, or slots × 4096 + 1 or a value near 2^64 when the top bits ask.
// Records follow: a keyslot (0, id, then its start as 512-byte units from
// the keyslots area's start, signed 16 bits, and its size in 4 KiB units,
// 16 bits), a segment (1, id, crypt?, start as 512-byte units from the
// keyslots area's end, signed 16 bits, sector size code, size code) or a
// digest (2, id, keyslot id, segment id). An id byte above 250 is not a
// number; 0xff in a start or size's high byte puts it near 2^64.
func decodeLayout(hdrSize uint64, slots uint16, jsonDelta int8, b []byte) *Metadata {
	ks := uint64(slots&0x3fff) * 4096
	switch slots >> 14 {
	case 1:
		ks++
	case 2:
		ks = math.MaxUint64 - uint64(slots&0x3fff)*4096
	}
	m := &Metadata{
		Keyslots: map[string]Keyslot{}, Tokens: map[string]json.RawMessage{},
		Segments: map[string]Segment{}, Digests: map[string]Digest{},
		Config: Config{JSONSize: U64(int64(hdrSize-BinaryHeaderSize) + int64(jsonDelta)), KeyslotsSize: U64(ks)},
	}
	id := func(c byte) string {
		if c > 250 {
			return "x" + strconv.Itoa(int(c))
		}
		return strconv.Itoa(int(c % 10))
	}
	u16 := func(p []byte) uint16 { return binary.BigEndian.Uint16(p) }
	near := func(base uint64, p []byte, unit uint64) U64 {
		if p[0] == 0xff {
			return U64(math.MaxUint64 - uint64(p[1])*unit)
		}
		return U64(base + uint64(int64(int16(u16(p))))*unit)
	}
	sectors := []int{512, 1024, 2048, 4096, 0, 256, 4097, 8192}
	for len(b) > 0 {
		switch b[0] % 3 {
		case 0:
			if len(b) < 7 {
				return m
			}
			size := U64(uint64(u16(b[5:7])) * 4096)
			if b[5] == 0xff {
				size = near(0, b[5:7], 1)
			}
			m.Keyslots[id(b[1])] = Keyslot{Type: "luks2", KeySize: KeySize, AF: AF{"luks1", Stripes, Hash},
				Area: Area{Type: "raw", Offset: near(2*hdrSize, b[3:5], 512), Size: size, Encryption: Cipher, KeySize: KeySize},
				KDF:  KDF{Type: "pbkdf2", Hash: Hash, Iterations: Iterations, Salt: "AAAA"}}
			b = b[7:]
		case 1:
			if len(b) < 11 {
				return m
			}
			s := Segment{Type: "linear", Offset: near(2*hdrSize+ks, b[3:5], 512), Encryption: Cipher, SectorSize: sectors[b[5]%8], Size: "dynamic"}
			if b[2]%2 == 1 {
				s.Type = "crypt"
			}
			switch b[6] % 3 {
			case 1:
				s.Size = strconv.FormatUint(uint64(binary.BigEndian.Uint32(b[7:11])), 10)
			case 2:
				s.Size = "-" + strconv.Itoa(int(b[7]))
			}
			m.Segments[id(b[1])] = s
			b = b[11:]
		case 2:
			if len(b) < 4 {
				return m
			}
			m.Digests[id(b[1])] = Digest{Type: "pbkdf2", Keyslots: []string{id(b[2])}, Segments: []string{id(b[3])},
				Hash: Hash, Iterations: Iterations, Salt: "AAAA", Digest: "AAAA"}
			b = b[4:]
		}
	}
	return m
}

// bulwarkMeta is the metadata Format writes, built without the keyslot
// crypto, which would dominate every fuzzing worker's start-up.
func bulwarkMeta() string {
	ks := Keyslot{Type: "luks2", KeySize: KeySize, AF: AF{"luks1", Stripes, Hash},
		Area: Area{"raw", KeyslotsOffset, 258048, Cipher, KeySize},
		KDF:  KDF{Type: "pbkdf2", Hash: Hash, Iterations: Iterations, Salt: "AAAA"}}
	meta := &Metadata{
		Keyslots: map[string]Keyslot{"0": ks},
		Tokens:   map[string]json.RawMessage{},
		Segments: map[string]Segment{"0": {Type: "crypt", Offset: DataOffset, Size: "dynamic", Encryption: Cipher, SectorSize: 4096}},
		Digests:  map[string]Digest{"0": {Type: "pbkdf2", Keyslots: []string{"0"}, Segments: []string{"0"}, Hash: Hash, Iterations: Iterations, Salt: "AAAA", Digest: "AAAA"}},
		Config:   Config{JSONSize: HeaderSize - BinaryHeaderSize, KeyslotsSize: KeyslotsSize},
	}
	b, err := json.Marshal(meta)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// cryptsetupMeta has the shape of what cryptsetup luksFormat writes, with
// what bulwark only tolerates: two keyslots (argon2id, and pbkdf2 with a
// priority), a token, segment and config flags, requirements.
const cryptsetupMeta = `{
  "keyslots": {
    "0": {"type": "luks2", "key_size": 64,
      "af": {"type": "luks1", "stripes": 4000, "hash": "sha256"},
      "area": {"type": "raw", "offset": "32768", "size": "258048", "encryption": "aes-xts-plain64", "key_size": 64},
      "kdf": {"type": "argon2id", "time": 4, "memory": 1048576, "cpus": 4, "salt": "c2FsdA=="}},
    "1": {"type": "luks2", "key_size": 64, "priority": 2,
      "af": {"type": "luks1", "stripes": 4000, "hash": "sha512"},
      "area": {"type": "raw", "offset": "290816", "size": "258048", "encryption": "aes-xts-plain64", "key_size": 64},
      "kdf": {"type": "pbkdf2", "hash": "sha512", "iterations": 1000, "salt": "c2FsdA=="}}
  },
  "tokens": {"0": {"type": "luks2-keyring", "keyslots": ["1"], "key_description": "k"}},
  "segments": {
    "0": {"type": "crypt", "offset": "16777216", "size": "dynamic", "iv_tweak": "0",
      "encryption": "aes-xts-plain64", "sector_size": 512, "flags": ["backup-x"]}
  },
  "digests": {
    "0": {"type": "pbkdf2", "keyslots": ["0", "1"], "segments": ["0"], "hash": "sha256",
      "iterations": 1000, "salt": "c2FsdA==", "digest": "ZGlnZXN0"}
  },
  "config": {"json_size": "12288", "keyslots_size": "16744448", "flags": ["allow-discards"],
    "requirements": {"mandatory": ["online-reencrypt"]}}
}`

// memDev is an in-memory device for Format.
type memDev struct{ buf []byte }

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.buf) {
		m.buf = append(m.buf, make([]byte, end-len(m.buf))...)
	}
	return copy(m.buf[off:], p), nil
}
