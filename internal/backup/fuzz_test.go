package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/secret"
)

// The fuzz targets read segments sealed with one fixed secret, opened
// through openSegment, past the RSA unwrapping: RSA-3072 took nearly all
// of the old FuzzOpen's time (tens of executions a second) and a mutated
// wrapped secret never unwrapped, so the chunk reader was hardly reached.
// The wrapped-secret field still counts: it is part of the header, whose
// digest every chunk tag covers.

// fuzzSecretBytes is the fixed segment secret: encryption key, MAC key and
// nonce, derived from a label so that it is the same in every run.
var fuzzSecretBytes = func() []byte {
	var b []byte
	for i := byte(0); len(b) < secretLen; i++ {
		s := sha256.Sum256([]byte{'f', 'u', 'z', 'z', i})
		b = append(b, s[:]...)
	}
	return b[:secretLen]
}()

func fuzzSecret(t testing.TB) *secret.Buf {
	sec, err := secret.New(secretLen)
	if err != nil {
		t.Fatal(err)
	}
	copy(sec.Bytes(), fuzzSecretBytes)
	return sec
}

// fuzzWrapped fills the wrapped-secret field; nothing unwraps it.
var fuzzWrapped = bytes.Repeat([]byte{0xa5}, wrappedLen)

var (
	fuzzBackup = BackupID{0x5f, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}
	fuzzKey    = KeyID{0x9a, 0x41}
)

// sealFixed seals plain as one segment under the fixed secret.
func sealFixed(t testing.TB, h Header, plain []byte) []byte {
	var out bytes.Buffer
	w, err := newSegmentWriter(&out, h, fuzzWrapped, fuzzSecret(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// openFixed is OpenSegment with the fixed secret.
func openFixed(t testing.TB) func(io.Reader) (*SegmentReader, error) {
	return func(r io.Reader) (*SegmentReader, error) {
		hdr, h, _, err := readHeader(r)
		if err != nil {
			return nil, err
		}
		return openSegment(r, hdr, h, fuzzSecret(t), 1)
	}
}

// readFixed reads a whole segment with the fixed secret; like open, it
// returns what the reader released before it failed.
func readFixed(t testing.TB, seg []byte) ([]byte, error) {
	r, err := openFixed(t)(bytes.NewReader(seg))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var out bytes.Buffer
	_, err = io.Copy(&out, r)
	return out.Bytes(), err
}

// The data segments FuzzOpen damages: TestPattern plaintexts of up to a
// little over three 64 KiB chunks, sealed once per length and kept.
const fuzzMaxPlain = 3<<testChunkLog + 1000

// maxEdits bounds the edits damage applies to one segment: at most a few
// MiB of repeated chunks.
const maxEdits = 32

// fuzzPattern is the longest plaintext; every shorter one is a prefix.
var fuzzPattern = TestPattern(fuzzMaxPlain)

var (
	sealedMu sync.Mutex
	sealed   = map[int][]byte{}
)

func sealedPattern(t testing.TB, n int) []byte {
	sealedMu.Lock()
	defer sealedMu.Unlock()
	if s, ok := sealed[n]; ok {
		return s
	}
	if len(sealed) > 64 {
		clear(sealed)
	}
	h := Header{Kind: KindData, ChunkLog: testChunkLog, KeyID: fuzzKey, Backup: fuzzBackup, Index: 3}
	s := sealFixed(t, h, fuzzPattern[:n])
	sealed[n] = s
	return s
}

// damage applies edits to a copy of seg. Each edit is five bytes: an
// operation, a position and an argument. A position below 0x8000 counts
// from the start (the header, the first chunk); above, it is a chunk
// boundary (bits 12-14) plus a signed offset (the low byte), where the
// tags and the cuts that matter lie. The operations are those an attacker
// with write access to the bucket has: cut, extend, overwrite, and move,
// repeat or drop whole chunks. Only the first maxEdits edits count, so
// that an input cannot grow the segment without bound: thousands of chunk
// repeats made one input take longer than the fuzzing engine waits for a
// worker, and CI reported it as a hung worker.
func damage(seg, edits []byte) []byte {
	out := bytes.Clone(seg)
	stride := 1<<testChunkLog + tagLen
	edits = edits[:min(len(edits), 5*maxEdits)]
	chunk := func(i int) (int, int) { // bounds of sealed chunk i, clipped
		start := min(headerLen+i*stride, len(out))
		return start, min(start+stride, len(out))
	}
	for ; len(edits) >= 5; edits = edits[5:] {
		op, pos, arg := edits[0]%8, int(binary.BigEndian.Uint16(edits[1:3])), binary.BigEndian.Uint16(edits[3:5])
		at := pos
		if pos >= 0x8000 {
			at = headerLen + (pos>>12&7)*stride + int(int8(pos))
		}
		at = max(0, min(at, len(out)))
		switch op {
		case 0: // cut
			out = out[:at]
		case 1: // drop a run of bytes
			out = append(out[:at], out[min(at+int(arg)%64+1, len(out)):]...)
		case 2: // insert bytes
			out = append(out[:at], append(bytes.Repeat([]byte{byte(arg)}, int(arg>>8)%8+1), out[at:]...)...)
		case 3: // flip bits
			if at < len(out) {
				out[at] ^= byte(arg) | 1
			}
		case 4: // append bytes
			out = append(out, bytes.Repeat([]byte{byte(arg)}, int(arg>>8)%40+1)...)
		case 5, 6, 7: // swap (5), repeat (6) or drop (7) a whole chunk
			a, b := pos%4, int(arg)%4
			as, ae := chunk(a)
			bs, be := chunk(b)
			ca, cb := bytes.Clone(out[as:ae]), bytes.Clone(out[bs:be])
			rest := bytes.Clone(out[ae:])
			switch op {
			case 5:
				if a < b && ae <= bs {
					mid := bytes.Clone(out[ae:bs])
					tail := bytes.Clone(out[be:])
					out = append(append(append(append(out[:as], cb...), mid...), ca...), tail...)
				}
			case 6:
				out = append(append(out[:ae], ca...), rest...)
			case 7:
				out = append(out[:as], rest...)
			}
		}
	}
	return out
}

// FuzzOpen damages sealed segments in the ways a bucket writer can and
// reads them with the fixed secret. The reader must accept exactly the
// segment as sealed, releasing its whole plaintext, and refuse every other
// byte string with an error, having released nothing but a prefix of the
// plaintext; it must never panic or hang.
func FuzzOpen(f *testing.F) {
	f.Add(uint32(1), []byte{})
	f.Add(uint32(0), []byte{})
	f.Add(uint32(1<<testChunkLog), []byte{0, 0x02, 0x00, 0, 0})
	f.Add(uint32(1<<testChunkLog+1), []byte{4, 0, 0, 0x01, 0x41})
	f.Add(uint32(3<<testChunkLog+7), []byte{5, 0, 0, 0, 2})
	f.Add(uint32(2<<testChunkLog), []byte{6, 0, 1, 0, 0})
	f.Add(uint32(2<<testChunkLog+9), []byte{7, 0, 1, 0, 0, 3, 0, 10, 0, 1})
	f.Add(uint32(100), []byte{3, 0, 9, 0, 1})                        // the header's chunk size
	f.Add(uint32(2<<testChunkLog), []byte{0, 0x90, 0, 0, 0})         // cut after chunk 0, exactly
	f.Add(uint32(2<<testChunkLog+5), []byte{3, 0xa0, 0xff, 0, 0x80}) // the last byte of chunk 1's tag
	f.Add(uint32(1<<testChunkLog), []byte{4, 0, 0, 0, 0})            // a byte after the final chunk
	f.Fuzz(func(t *testing.T, n uint32, edits []byte) {
		plain := int(n % (fuzzMaxPlain + 1))
		orig := sealedPattern(t, plain)
		seg := damage(orig, edits)
		got, err := readFixed(t, seg)
		if len(got) > len(fuzzPattern) || !bytes.Equal(got, fuzzPattern[:len(got)]) {
			t.Fatalf("released %d bytes that are not the plaintext", len(got))
		}
		switch same := bytes.Equal(seg, orig); {
		case same && err != nil:
			t.Fatalf("the segment as sealed (%d plaintext bytes) is refused: %v", plain, err)
		case same && len(got) != plain:
			t.Fatalf("the segment as sealed released %d of its %d plaintext bytes", len(got), plain)
		case !same && err == nil:
			t.Fatalf("a damaged segment (%d bytes, sealed %d) was accepted, releasing %d bytes", len(seg), len(orig), len(got))
		}
	})
}

// FuzzManifest feeds manifest plaintexts, sealed as the manifest segment
// of a backup under the fixed secret, to the manifest reader. It must not
// panic; what it accepts must follow the manifest's rules (checked here
// independently of the reader) and must read back the same after being
// encoded again.
func FuzzManifest(f *testing.F) {
	node, id := "db-1", fuzzBackup.String()
	good := Manifest{
		Format: 1, BackupID: id, Node: node, Region: "eu-north-1",
		Created: time.Date(2026, 11, 27, 2, 0, 0, 0, time.UTC), Source: Source{Kind: "tree", Name: "/var/lib/postgresql"},
		KeyID: fuzzKey.String(), ChunkSize: 1 << 20, SegmentSize: 64 << 20, PlaintextBytes: 64<<20 + 5,
		PlaintextSHA256: "00", Segments: []SegmentEntry{
			{Index: 0, Object: "seg-00000000", PlaintextBytes: 64 << 20, CiphertextBytes: 67174850, CiphertextSHA256: "ab"},
			{Index: 1, Object: "seg-00000001", PlaintextBytes: 5, CiphertextBytes: 487, CiphertextSHA256: "cd"},
		},
	}
	b, _ := json.Marshal(good)
	f.Add(b)
	f.Add([]byte(`{"format":1,"backup_id":"` + id + `","node":"db-1","key_id":"` + fuzzKey.String() + `","segments":[{"index":0,"object":"seg-00000000"}]}`))
	f.Add([]byte(`{"format":1,"segments":[],"extra":true}`))
	h := Header{Kind: KindManifest, ChunkLog: testChunkLog, KeyID: fuzzKey, Backup: fuzzBackup, Index: ManifestIndex}
	f.Fuzz(func(t *testing.T, body []byte) {
		obj := sealFixed(t, h, body)
		m, err := readManifest(bytes.NewReader(obj), node, id, fuzzBackup, openFixed(t))
		if err != nil {
			return
		}
		if err := manifestRules(m, node, id); err != nil {
			t.Fatalf("accepted a manifest that breaks its rules: %v\n%s", err, body)
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := readManifest(bytes.NewReader(sealFixed(t, h, again)), node, id, fuzzBackup, openFixed(t))
		if err != nil {
			t.Fatalf("an accepted manifest, encoded again, is refused: %v\n%s", err, again)
		}
		if b2, _ := json.Marshal(m2); !bytes.Equal(b2, again) {
			t.Fatalf("an accepted manifest does not read back the same:\n%s\n%s", again, b2)
		}
	})
}

// manifestRules restates what docs/backup-format.md requires of a
// manifest, written apart from the reader's own checks.
func manifestRules(m *Manifest, node, id string) error {
	if m.Format != 1 || m.BackupID != id || m.Node != node || m.KeyID != fuzzKey.String() {
		return fmt.Errorf("format %d, backup %q, node %q, key %q", m.Format, m.BackupID, m.Node, m.KeyID)
	}
	if len(m.Segments) == 0 {
		return fmt.Errorf("no segment")
	}
	var sum int64
	for i, s := range m.Segments {
		if int(s.Index) != i || s.Object != fmt.Sprintf("seg-%08d", i) {
			return fmt.Errorf("entry %d is segment %d, object %q", i, s.Index, s.Object)
		}
		sum += s.PlaintextBytes
	}
	if sum != m.PlaintextBytes {
		return fmt.Errorf("segments hold %d bytes, the manifest says %d", sum, m.PlaintextBytes)
	}
	return nil
}
