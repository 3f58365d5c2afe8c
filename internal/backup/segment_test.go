package backup

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
)

// testKeys returns the committed test key pair (testdata/test-key.pem) and
// a second pair for wrong-key cases, made once per run.
var testKeys = sync.OnceValues(func() (*rsa.PrivateKey, *rsa.PrivateKey) {
	b, err := os.ReadFile("testdata/test-key.pem")
	if err != nil {
		panic(err)
	}
	k, err := ParsePrivateKey(b)
	if err != nil {
		panic(err)
	}
	other, err := GenerateKey()
	if err != nil {
		panic(err)
	}
	return k, other
})

func keyring(t testing.TB, keys ...*rsa.PrivateKey) Keyring {
	t.Helper()
	kr, err := NewKeyring(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

const testChunkLog = minChunkLog // 64 KiB chunks keep the tests fast

func seal(t testing.TB, pub *rsa.PublicKey, h Header, plain []byte, workers int) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := NewSegmentWriter(&out, pub, h, workers)
	if err != nil {
		t.Fatal(err)
	}
	// Uneven writes cross chunk boundaries at odd places.
	for p := plain; len(p) > 0; {
		n := min(len(p), 7919)
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Written() != int64(out.Len()) {
		t.Fatalf("Written() = %d, wrote %d", w.Written(), out.Len())
	}
	return out.Bytes()
}

// open reads a whole segment; it returns what the reader released before
// it failed, so that tests can check nothing unverified got out.
func open(kr Keyring, seg []byte, workers int) ([]byte, error) {
	r, err := OpenSegment(bytes.NewReader(seg), kr, workers)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var out bytes.Buffer
	_, err = io.Copy(&out, r)
	return out.Bytes(), err
}

func dataHeader(index uint32) Header {
	return Header{Kind: KindData, ChunkLog: testChunkLog, Backup: BackupID{1, 2, 3}, Index: index}
}

func pattern(n int) []byte { return TestPattern(n) }

func TestSegmentRoundTrip(t *testing.T) {
	k, _ := testKeys()
	kr := keyring(t, k)
	c := 1 << testChunkLog
	for _, n := range []int{0, 1, c - 1, c, c + 1, 2*c - 1, 2 * c, 2*c + 1, 5*c + 17} {
		for _, workers := range []int{1, 3} {
			plain := pattern(n)
			seg := seal(t, &k.PublicKey, dataHeader(7), plain, workers)
			chunks := max(1, (n+c-1)/c)
			if n > 0 && n%c == 0 {
				chunks = n / c
			}
			if want := headerLen + n + chunks*tagLen; len(seg) != want {
				t.Errorf("n=%d: segment is %d bytes, want %d", n, len(seg), want)
			}
			got, err := open(kr, seg, workers)
			if err != nil {
				t.Fatalf("n=%d workers=%d: %v", n, workers, err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("n=%d workers=%d: plaintext differs", n, workers)
			}
			// Read (not WriteTo, which open's io.Copy uses), with short reads.
			r, err := OpenSegment(bytes.NewReader(seg), kr, workers)
			if err != nil {
				t.Fatal(err)
			}
			viaRead, err := io.ReadAll(iotest.HalfReader(r))
			r.Close()
			if err != nil || !bytes.Equal(viaRead, plain) {
				t.Fatalf("n=%d: Read: %d bytes, %v", n, len(viaRead), err)
			}
			// The same through ReadFrom (io.Copy), with short reads.
			var out bytes.Buffer
			w, err := NewSegmentWriter(&out, &k.PublicKey, dataHeader(7), workers)
			if err != nil {
				t.Fatal(err)
			}
			if m, err := io.Copy(w, iotest.HalfReader(bytes.NewReader(plain))); err != nil || m != int64(n) {
				t.Fatalf("n=%d: ReadFrom copied %d: %v", n, m, err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if len(out.Bytes()) != len(seg) {
				t.Fatalf("n=%d: ReadFrom made %d bytes, Write %d", n, out.Len(), len(seg))
			}
			if got, err := open(kr, out.Bytes(), workers); err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("n=%d: the ReadFrom segment: %v", n, err)
			}
			if n > 16 && bytes.Contains(seg, plain[:16]) {
				t.Fatalf("n=%d: plaintext visible in the segment", n)
			}
		}
	}
}

func TestSegmentsHaveTheirOwnKeys(t *testing.T) {
	k, _ := testKeys()
	plain := pattern(1000)
	a := seal(t, &k.PublicKey, dataHeader(0), plain, 1)
	b := seal(t, &k.PublicKey, dataHeader(0), plain, 1)
	if bytes.Equal(a[66:headerLen], b[66:headerLen]) || bytes.Equal(a[headerLen:], b[headerLen:]) {
		t.Fatal("two segments of the same plaintext share a wrapped secret or a ciphertext")
	}
}

// TestTamper flips one bit in every header field and in each region of
// each chunk, cuts the segment at every boundary, and reorders, duplicates
// and splices chunks: each is refused with a clear error, and nothing from
// the damaged chunk or after it is released.
func TestTamper(t *testing.T) {
	k, other := testKeys()
	kr := keyring(t, k)
	c := 1 << testChunkLog
	plain := pattern(2*c + 100) // chunks: full, full, 100 bytes
	seg := seal(t, &k.PublicKey, dataHeader(3), plain, 2)
	chunkAt := func(i int) int { return headerLen + i*(c+tagLen) }
	flip := func(off int) []byte {
		b := bytes.Clone(seg)
		b[off] ^= 0x10
		return b
	}
	type tc struct {
		name string
		seg  []byte
		want string
		// released is how many plaintext bytes may come out before the
		// error: those of the chunks before the damaged one.
		released int
	}
	cases := []tc{
		{"magic", flip(0), "bad magic", 0},
		{"version", flip(8), "version", 0},
		{"kind", flip(9), "kind", 0},
		{"chunk size", flip(10), "chunk size", 0},
		{"reserved", flip(11), "reserved", 0},
		{"key id", flip(20), "not among the private keys", 0},
		{"backup id", flip(50), "chunk 0: authentication failed", 0},
		{"index", flip(63), "chunk 0: authentication failed", 0},
		{"wrapped length", flip(65), "wrapped-secret length", 0},
		{"wrapped secret", flip(200), "does not decrypt", 0},
		{"chunk 0 ciphertext start", flip(chunkAt(0)), "chunk 0: authentication failed", 0},
		{"chunk 0 ciphertext end", flip(chunkAt(0) + c - 1), "chunk 0: authentication failed", 0},
		{"chunk 0 tag", flip(chunkAt(0) + c + 5), "chunk 0: authentication failed", 0},
		{"chunk 1 ciphertext", flip(chunkAt(1) + 1000), "chunk 1: authentication failed", c},
		{"chunk 2 (final) ciphertext", flip(chunkAt(2) + 50), "chunk 2: authentication failed", 2 * c},
		{"chunk 2 (final) tag", flip(len(seg) - 1), "chunk 2: authentication failed", 2 * c},
		{"empty file", nil, "empty segment", 0},
		{"cut inside the header", seg[:100], "inside its header", 0},
		{"header only", seg[:headerLen], "no chunk", 0},
		{"cut after chunk 0", seg[:chunkAt(1)], "chunk 0: the segment ends here but this chunk is not its final chunk", 0},
		{"cut after chunk 1", seg[:chunkAt(2)], "chunk 1: the segment ends here", c},
		{"cut inside chunk 1", seg[:chunkAt(1)+500], "chunk 1: authentication failed", c},
		{"cut inside the last tag", seg[:len(seg)-10], "chunk 2: authentication failed", 2 * c},
		{"trailing byte", append(bytes.Clone(seg), 0), "chunk 2: authentication failed", 2 * c},
		{"chunks 0 and 1 swapped", swap(seg, chunkAt(0), chunkAt(1), c+tagLen), "chunk 0: authentication failed", 0},
		{"chunk 0 duplicated", dup(seg, chunkAt(0), c+tagLen), "chunk 1: authentication failed", c},
	}
	// A full final chunk followed by more data: drop the 100-byte chunk
	// from a segment whose plaintext is exactly two chunks, then append.
	exact := seal(t, &k.PublicKey, dataHeader(3), pattern(2*c), 1)
	cases = append(cases, tc{"data after a full final chunk", append(bytes.Clone(exact), seg[chunkAt(2):]...), "chunk 1: data follows the segment's final chunk", c})
	// Splices: a chunk of another segment of the same backup, and of the
	// same position in another backup.
	sib := seal(t, &k.PublicKey, dataHeader(4), plain, 1)
	spliced := bytes.Clone(seg)
	copy(spliced[chunkAt(1):chunkAt(2)], sib[chunkAt(1):chunkAt(2)])
	cases = append(cases, tc{"chunk spliced from another segment", spliced, "chunk 1: authentication failed", c})
	h := dataHeader(3)
	h.Backup = BackupID{9}
	foreign := seal(t, &k.PublicKey, h, plain, 1)
	spliced2 := bytes.Clone(foreign)
	copy(spliced2[:headerLen], seg[:headerLen])
	cases = append(cases, tc{"another backup's chunks under this header", spliced2, "chunk 0: authentication failed", 0})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := open(kr, tc.seg, 2)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if len(got) > tc.released || !bytes.Equal(got, plain[:len(got)]) {
				t.Fatalf("released %d bytes before the error; at most %d verified ones may come out", len(got), tc.released)
			}
		})
	}
	t.Run("wrong private key", func(t *testing.T) {
		_, err := open(keyring(t, other), seg, 1)
		var uk *UnknownKeyError
		if !errors.As(err, &uk) || uk.ID != mustID(t, &k.PublicKey) {
			t.Fatalf("want an unknown-key error naming the segment's key id, got %v", err)
		}
	})
}

func mustID(t *testing.T, pub *rsa.PublicKey) KeyID {
	id, err := IDOf(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func swap(b []byte, i, j, n int) []byte {
	out := bytes.Clone(b)
	copy(out[i:i+n], b[j:j+n])
	copy(out[j:j+n], b[i:i+n])
	return out
}

func dup(b []byte, i, n int) []byte {
	out := append([]byte{}, b[:i+n]...)
	return append(out, b[i:]...)
}

func TestKeyChecks(t *testing.T) {
	k, _ := testKeys()
	small, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewSegmentWriter(io.Discard, &small.PublicKey, dataHeader(0), 1); err == nil || !strings.Contains(err.Error(), "2048 bits") {
		t.Fatalf("a 2048-bit key: %v", err)
	}
	pemPub, _ := PublicKeyPEM(&small.PublicKey)
	if _, err := ParsePublicKey(pemPub); err == nil || !strings.Contains(err.Error(), "2048 bits") {
		t.Fatalf("a 2048-bit PEM key: %v", err)
	}
	if _, err := NewSegmentWriter(io.Discard, &k.PublicKey, Header{Kind: 3, ChunkLog: 20}, 1); err == nil {
		t.Fatal("kind 3 accepted")
	}
	if _, err := NewSegmentWriter(io.Discard, &k.PublicKey, Header{Kind: KindData, ChunkLog: 30}, 1); err == nil {
		t.Fatal("chunk size 2^30 accepted")
	}
	if _, err := ParsePrivateKey([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")); err == nil || strings.Contains(err.Error(), "AAAA") {
		t.Fatalf("a broken private key: %v", err)
	}
}
