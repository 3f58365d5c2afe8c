package luks2

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
)

// Metadata is the JSON document of a LUKS2 header. Only the fields that
// bulwark writes or checks are typed; unknown members of keyslots, tokens
// and segments are tolerated on read, as the specification asks.
type Metadata struct {
	Keyslots map[string]Keyslot         `json:"keyslots"`
	Tokens   map[string]json.RawMessage `json:"tokens"`
	Segments map[string]Segment         `json:"segments"`
	Digests  map[string]Digest          `json:"digests"`
	Config   Config                     `json:"config"`
}

// Keyslot holds one encrypted copy of the volume key.
type Keyslot struct {
	Type     string `json:"type"`
	KeySize  int    `json:"key_size"`
	AF       AF     `json:"af"`
	Area     Area   `json:"area"`
	KDF      KDF    `json:"kdf"`
	Priority *int   `json:"priority,omitempty"`
}

// AF is the anti-forensic splitter of a keyslot.
type AF struct {
	Type    string `json:"type"`
	Stripes int    `json:"stripes"`
	Hash    string `json:"hash"`
}

// Area is where a keyslot's split key lies in the keyslots area, and how it
// is encrypted there.
type Area struct {
	Type       string `json:"type"`
	Offset     U64    `json:"offset"`
	Size       U64    `json:"size"`
	Encryption string `json:"encryption"`
	KeySize    int    `json:"key_size"`
}

// KDF turns a passphrase into the key of a keyslot area.
type KDF struct {
	Type       string `json:"type"`
	Hash       string `json:"hash,omitempty"`
	Iterations int    `json:"iterations,omitempty"`
	Time       int    `json:"time,omitempty"`
	Memory     int    `json:"memory,omitempty"`
	CPUs       int    `json:"cpus,omitempty"`
	Salt       string `json:"salt"`
}

// Segment is an encrypted data area of the device.
type Segment struct {
	Type       string `json:"type"`
	Offset     U64    `json:"offset"`
	Size       string `json:"size"` // "dynamic" or a byte count
	IVTweak    U64    `json:"iv_tweak"`
	Encryption string `json:"encryption"`
	SectorSize int    `json:"sector_size"`
	// Integrity and Flags are read so that a reader can refuse what it
	// does not support; bulwark never writes them.
	Integrity json.RawMessage `json:"integrity,omitempty"`
	Flags     []string        `json:"flags,omitempty"`
}

// Digest verifies a candidate volume key.
type Digest struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
	Hash       string   `json:"hash"`
	Iterations int      `json:"iterations"`
	Salt       string   `json:"salt"`
	Digest     string   `json:"digest"`
}

// Config holds the sizes of the metadata areas.
type Config struct {
	JSONSize     U64             `json:"json_size"`
	KeyslotsSize U64             `json:"keyslots_size"`
	Flags        []string        `json:"flags,omitempty"`
	Requirements json.RawMessage `json:"requirements,omitempty"`
}

// U64 is a 64-bit unsigned number, which LUKS2 stores as a JSON string
// because JSON numbers are not safe beyond 2^53.
type U64 uint64

func (u U64) MarshalJSON() ([]byte, error) {
	return json.Marshal(strconv.FormatUint(uint64(u), 10))
}

func (u *U64) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a decimal number in a string, got %s", b)
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("want a decimal number in a string, got %q", s)
	}
	*u = U64(v)
	return nil
}

func parseMetadata(text []byte, hdrSize uint64) (*Metadata, error) {
	var m Metadata
	dec := json.NewDecoder(bytes.NewReader(text))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("JSON metadata: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("JSON metadata: trailing data after the document")
	}
	if err := m.check(hdrSize); err != nil {
		return nil, fmt.Errorf("JSON metadata: %w", err)
	}
	return &m, nil
}

type span struct {
	what       string
	start, end uint64
}

// check enforces the structural rules of the specification: sizes that
// match the binary header, areas inside the keyslots area that do not
// overlap, segments after the metadata, digests that name existing
// keyslots and segments.
func (m *Metadata) check(hdrSize uint64) error {
	if m.Keyslots == nil || m.Segments == nil || m.Digests == nil || m.Tokens == nil {
		return fmt.Errorf("missing one of the required objects keyslots, tokens, segments, digests")
	}
	if uint64(m.Config.JSONSize) != hdrSize-BinaryHeaderSize {
		return fmt.Errorf("config.json_size is %d but the binary header implies %d", m.Config.JSONSize, hdrSize-BinaryHeaderSize)
	}
	ks := uint64(m.Config.KeyslotsSize)
	if ks%4096 != 0 {
		return fmt.Errorf("config.keyslots_size %d is not a multiple of 4096", ks)
	}
	areaStart, areaEnd := 2*hdrSize, 2*hdrSize+ks
	if areaEnd < areaStart {
		return fmt.Errorf("config.keyslots_size %d overflows", ks)
	}
	var spans []span
	for _, id := range sortedKeys(m.Keyslots) {
		k := m.Keyslots[id]
		if _, err := strconv.ParseUint(id, 10, 32); err != nil {
			return fmt.Errorf("keyslot id %q is not a number", id)
		}
		start, size := uint64(k.Area.Offset), uint64(k.Area.Size)
		if size == 0 || start+size < start || start < areaStart || start+size > areaEnd {
			return fmt.Errorf("keyslot %s area [%d, %d) lies outside the keyslots area [%d, %d)", id, start, start+size, areaStart, areaEnd)
		}
		spans = append(spans, span{"keyslot " + id, start, start + size})
	}
	for _, id := range sortedKeys(m.Segments) {
		s := m.Segments[id]
		if _, err := strconv.ParseUint(id, 10, 32); err != nil {
			return fmt.Errorf("segment id %q is not a number", id)
		}
		if uint64(s.Offset) < areaEnd {
			return fmt.Errorf("segment %s starts at %d, inside the metadata and keyslots areas (which end at %d)", id, s.Offset, areaEnd)
		}
		switch s.SectorSize {
		case 512, 1024, 2048, 4096:
		default:
			if s.Type == "crypt" {
				return fmt.Errorf("segment %s sector_size %d is not 512, 1024, 2048 or 4096", id, s.SectorSize)
			}
		}
		if s.SectorSize > 0 && uint64(s.Offset)%uint64(s.SectorSize) != 0 {
			return fmt.Errorf("segment %s offset %d is not aligned to its %d-byte sectors", id, s.Offset, s.SectorSize)
		}
		if s.Size != "dynamic" {
			if _, err := strconv.ParseUint(s.Size, 10, 64); err != nil {
				return fmt.Errorf("segment %s size %q is neither \"dynamic\" nor a number", id, s.Size)
			}
		}
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			return fmt.Errorf("%s area overlaps %s area", spans[i].what, spans[i-1].what)
		}
	}
	for _, id := range sortedKeys(m.Digests) {
		d := m.Digests[id]
		for _, k := range d.Keyslots {
			if _, ok := m.Keyslots[k]; !ok {
				return fmt.Errorf("digest %s names keyslot %s, which does not exist", id, k)
			}
		}
		for _, s := range d.Segments {
			if _, ok := m.Segments[s]; !ok {
				return fmt.Errorf("digest %s names segment %s, which does not exist", id, s)
			}
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, _ := strconv.Atoi(keys[i])
		b, _ := strconv.Atoi(keys[j])
		return a < b
	})
	return keys
}
