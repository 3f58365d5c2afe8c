package verity

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// image writes blocks pseudo-random data blocks followed by our hash area
// into one file, as the system image is laid out, and returns the file,
// the result and the superblock used.
func image(t *testing.T, blocks uint64) (string, *Result, Superblock) {
	t.Helper()
	r := rand.New(rand.NewPCG(blocks, 7))
	data := make([]byte, blocks*BlockSize)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	salt := sha256.Sum256([]byte("test salt"))
	sb := Superblock{Salt: salt[:]}
	copy(sb.UUID[:], []byte{0x6a, 0x2e, 0x1f, 0x44, 0x31, 0x0b, 0x4c, 0x5d, 0x8e, 0x9f, 0xa0, 0xb1, 0xc2, 0xd3, 0xe4, 0xf5})
	p := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	res, err := Format(bytes.NewReader(data), blocks, f, int64(len(data)), sb)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	if want := int64(len(data)) + res.HashBytes; st.Size() != want {
		t.Fatalf("image is %d bytes, want data+hash area %d", st.Size(), want)
	}
	return p, res, sb
}

func veritysetup(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("veritysetup"); err != nil {
		t.Fatal("veritysetup is not installed (Debian cryptsetup-bin; make deps installs it)")
	}
	out, err := exec.Command("veritysetup", args...).CombinedOutput()
	return string(out), err
}

func uuidString(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// The sizes cover one, two and three levels and their edges.
var sizes = []uint64{1, 2, 127, 128, 129, 300, 128 * 128, 128*128 + 1}

// TestVeritysetupAcceptsOurs: veritysetup verify, reading our superblock
// at the hash offset, accepts our tree with our root hash.
func TestVeritysetupAcceptsOurs(t *testing.T) {
	for _, n := range sizes {
		p, res, _ := image(t, n)
		root := hex.EncodeToString(res.RootHash[:])
		out, err := veritysetup(t, "verify", p, p, root, "--hash-offset", itoa(res.HashOffset))
		if err != nil {
			t.Errorf("%d blocks: veritysetup verify refused our image: %v\n%s", n, err, out)
		}
		f, _ := os.Open(p)
		if _, err := Verify(f, f, res.HashOffset, res.RootHash[:]); err != nil {
			t.Errorf("%d blocks: our Verify refused our image: %v", n, err)
		}
		f.Close()
	}
}

// TestFlippedBitFails: one flipped bit in the data area, in the tree or in
// the superblock's salt makes veritysetup verify (and Verify) fail.
func TestFlippedBitFails(t *testing.T) {
	const n = 300
	p, res, _ := image(t, n)
	root := hex.EncodeToString(res.RootHash[:])
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		off  int64
	}{
		{"first data block", 17},
		{"last data block", n*BlockSize - 1},
		{"level 0 of the tree", res.HashOffset + 2*BlockSize + 40},
		{"top of the tree", res.HashOffset + BlockSize + 3},
		{"salt in the superblock", res.HashOffset + 88},
	} {
		b := bytes.Clone(orig)
		b[c.off] ^= 0x10
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := veritysetup(t, "verify", p, p, root, "--hash-offset", itoa(res.HashOffset)); err == nil {
			t.Errorf("%s: veritysetup verify accepted an image with a flipped bit:\n%s", c.name, out)
		}
		if _, err := Verify(bytes.NewReader(b), bytes.NewReader(b), res.HashOffset, res.RootHash[:]); err == nil {
			t.Errorf("%s: Verify accepted an image with a flipped bit", c.name)
		}
	}
}

// TestVeritysetupFormatAgrees: veritysetup format over the same data with
// our salt, UUID and block sizes writes the same hash area, byte for
// byte, and prints our root hash.
func TestVeritysetupFormatAgrees(t *testing.T) {
	for _, n := range sizes {
		p, res, sb := image(t, n)
		ours, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		theirs := filepath.Join(t.TempDir(), "img")
		if err := os.WriteFile(theirs, ours[:res.HashOffset], 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := veritysetup(t, "format", theirs, theirs, "--hash-offset", itoa(res.HashOffset),
			"--data-block-size", "4096", "--hash-block-size", "4096", "--hash", "sha256", "--format", "1",
			"--salt", hex.EncodeToString(sb.Salt), "--uuid", uuidString(sb.UUID))
		if err != nil {
			t.Fatalf("%d blocks: veritysetup format: %v\n%s", n, err, out)
		}
		m := regexp.MustCompile(`Root hash:\s+([0-9a-f]{64})`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no root hash in veritysetup's output:\n%s", out)
		}
		if m[1] != hex.EncodeToString(res.RootHash[:]) {
			t.Errorf("%d blocks: veritysetup's root hash %s, ours %x", n, m[1], res.RootHash)
		}
		tb, err := os.ReadFile(theirs)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tb, ours) {
			t.Errorf("%d blocks: veritysetup's hash area (%d bytes with the data) differs from ours (%d)", n, len(tb), len(ours))
		}
	}
}

func TestParseSuperblock(t *testing.T) {
	salt := bytes.Repeat([]byte{0xab}, 32)
	good, err := (&Superblock{DataBlocks: 9, Salt: salt}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	sb, err := ParseSuperblock(good)
	if err != nil || sb.DataBlocks != 9 || !bytes.Equal(sb.Salt, salt) {
		t.Fatalf("round trip: %+v, %v", sb, err)
	}
	for _, c := range []struct {
		name string
		edit func(b []byte)
		want string
	}{
		{"signature", func(b []byte) { b[0] = 'V' }, "no verity superblock"},
		{"version", func(b []byte) { b[8] = 2 }, "superblock version 2"},
		{"hash type", func(b []byte) { b[12] = 0 }, "hash type 0"},
		{"algorithm", func(b []byte) { copy(b[32:], "sha1\x00\x00") }, `algorithm "sha1"`},
		{"block size", func(b []byte) { b[65] = 0x02 }, "block sizes 512"},
		{"no blocks", func(b []byte) { clear(b[72:80]) }, "0 data blocks"},
		{"salt size", func(b []byte) { b[80], b[81] = 0x01, 0x01 }, "salt size 257"},
		{"padding", func(b []byte) { b[500] = 1 }, "padding is not zero"},
	} {
		b := bytes.Clone(good)
		c.edit(b)
		if _, err := ParseSuperblock(b); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

// TestCheckRoot: the one-block check a node makes before mapping refuses
// another root hash and a superblock with another salt.
func TestCheckRoot(t *testing.T) {
	p, res, _ := image(t, 300)
	b, _ := os.ReadFile(p)
	r := bytes.NewReader(b)
	sb, err := ReadSuperblock(r, res.HashOffset)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckRoot(r, r, res.HashOffset, sb, res.RootHash[:]); err != nil {
		t.Fatalf("our own root: %v", err)
	}
	other := res.RootHash
	other[31] ^= 1
	if err := CheckRoot(r, r, res.HashOffset, sb, other[:]); err != ErrRootMismatch {
		t.Errorf("another root hash: %v", err)
	}
	sb.Salt[0] ^= 1
	if err := CheckRoot(r, r, res.HashOffset, sb, res.RootHash[:]); err != ErrRootMismatch {
		t.Errorf("another salt: %v", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
