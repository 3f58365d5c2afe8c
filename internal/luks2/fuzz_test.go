package luks2

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzRead feeds arbitrary bytes to the header reader: it must return a
// header or an error, never panic or hang, and what it accepts must pass
// its own structural checks.
func FuzzRead(f *testing.F) {
	// The seed is a well-formed header pair built without the keyslot
	// crypto, which would dominate every fuzzing worker's start-up.
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
	var dev memDev
	h := &Header{UUID: "00000000-0000-4000-8000-000000000000", SeqID: 1, HdrSize: HeaderSize, Meta: meta}
	if err := writeHeaders(&dev, bytes.NewReader(make([]byte, 128)), h); err != nil {
		f.Fatal(err)
	}
	hdr := dev.buf
	f.Add(hdr)
	f.Add(hdr[:BinaryHeaderSize])
	f.Add(append(make([]byte, HeaderSize), hdr[HeaderSize:]...))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Read(bytes.NewReader(b))
		if err != nil {
			return
		}
		if err := h.Meta.check(h.HdrSize); err != nil {
			t.Fatalf("accepted a header that fails its checks: %v", err)
		}
		h.Segment()
		h.keyslotIDs()
	})
}

// memDev is an in-memory device for Format.
type memDev struct{ buf []byte }

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.buf) {
		m.buf = append(m.buf, make([]byte, end-len(m.buf))...)
	}
	return copy(m.buf[off:], p), nil
}
