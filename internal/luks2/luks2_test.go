package luks2

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func cryptsetup(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Fatal("cryptsetup is not installed (make deps installs cryptsetup-bin)")
	}
	out, err := exec.Command("cryptsetup", args...).CombinedOutput()
	return string(out), err
}

func mustCryptsetup(t *testing.T, args ...string) string {
	t.Helper()
	out, err := cryptsetup(t, args...)
	if err != nil {
		t.Fatalf("cryptsetup %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// dumpVolumeKey returns the volume key cryptsetup recovers with keyFile.
func dumpVolumeKey(t *testing.T, img, keyFile string, extra ...string) []byte {
	t.Helper()
	args := append([]string{"luksDump", "--batch-mode", "--dump-volume-key", "--key-file", keyFile}, extra...)
	out := mustCryptsetup(t, append(args, img)...)
	i := strings.Index(out, "MK dump:")
	if i < 0 {
		t.Fatalf("no MK dump in cryptsetup output:\n%s", out)
	}
	var hexed strings.Builder
	for _, f := range strings.Fields(out[i+len("MK dump:"):]) {
		if len(f) != 2 {
			break
		}
		hexed.WriteString(f)
	}
	key, err := hex.DecodeString(hexed.String())
	if err != nil {
		t.Fatalf("parsing MK dump: %v", err)
	}
	return key
}

func tempImage(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func writeKeyFile(t *testing.T, b []byte) string {
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func formatImage(t *testing.T, size int64, o Options) (img string, key, pass []byte, h *Header) {
	t.Helper()
	img = tempImage(t, size)
	key, pass = random(t, KeySize), random(t, KeySize)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err = Format(f, size, key, pass, o)
	if err != nil {
		t.Fatal(err)
	}
	return img, key, pass, h
}

// Every header our writer makes is accepted by the real cryptsetup, which
// recovers exactly our volume key with our passphrase.
func TestFormatAcceptedByCryptsetup(t *testing.T) {
	for _, sector := range []int{512, 4096} {
		t.Run("sector"+strconv.Itoa(sector), func(t *testing.T) {
			img, key, pass, h := formatImage(t, 32<<20, Options{SectorSize: sector, Label: "bulwark-test"})
			mustCryptsetup(t, "isLuks", "--type", "luks2", img)
			dump := mustCryptsetup(t, "luksDump", img)
			for _, want := range []string{
				"Version:       \t2", "UUID:          \t" + h.UUID, "Label:         \tbulwark-test",
				"cipher: aes-xts-plain64", "sector: " + strconv.Itoa(sector) + " [bytes]", "Key:        512 bits",
				"PBKDF:      pbkdf2", "Hash:       sha256", "AF stripes: 4000", "offset: 16777216 [bytes]",
			} {
				if !strings.Contains(dump, want) {
					t.Errorf("luksDump lacks %q:\n%s", want, dump)
				}
			}
			got := dumpVolumeKey(t, img, writeKeyFile(t, pass))
			if !bytes.Equal(got, key) {
				t.Fatalf("cryptsetup recovered %x, we wrote %x", got, key)
			}
			// And our own reader agrees.
			f, _ := os.Open(img)
			defer f.Close()
			rh, err := Read(f)
			if err != nil {
				t.Fatal(err)
			}
			if rh.UUID != h.UUID || rh.FromSecondary {
				t.Fatalf("read back UUID %s (secondary %v), wrote %s", rh.UUID, rh.FromSecondary, h.UUID)
			}
			buf := make([]byte, KeySize)
			if _, err := rh.Unlock(f, pass, buf); err != nil || !bytes.Equal(buf, key) {
				t.Fatalf("unlock: %v", err)
			}
			if _, err := rh.Unlock(f, random(t, 64), buf); !errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("wrong passphrase: got %v", err)
			}
		})
	}
}

// Headers made by cryptsetup luksFormat with varied options are read; the
// pbkdf2 keyslots unlock to the key cryptsetup reports; the rest are named
// as unsupported.
func TestReadCryptsetupHeaders(t *testing.T) {
	type variant struct {
		name        string
		format      []string
		addKey      bool // a second pbkdf2 keyslot with another passphrase
		token       bool
		unsupported string // the unlock error must mention this
	}
	pb := []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
	variants := []variant{
		{name: "pbkdf2-4096", format: append([]string{"--sector-size", "4096"}, pb...)},
		{name: "pbkdf2-512", format: append([]string{"--sector-size", "512"}, pb...)},
		{name: "pbkdf2-sha512-aes256", format: append([]string{"--hash", "sha512", "--key-size", "256"}, pb...)},
		{name: "two-keyslots-and-token", format: pb, addKey: true, token: true},
		{name: "argon2id", format: []string{"--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768", "--pbkdf-parallel", "1"}, unsupported: "argon2id"},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			img := tempImage(t, 32<<20)
			pass := writeKeyFile(t, []byte("first passphrase"))
			mustCryptsetup(t, append(append([]string{"luksFormat", "--batch-mode", "--type", "luks2", "--key-file", pass}, v.format...), img)...)
			pass2 := writeKeyFile(t, []byte("second passphrase"))
			if v.addKey {
				mustCryptsetup(t, "luksAddKey", "--batch-mode", "--key-file", pass, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img, pass2)
			}
			if v.token {
				tok := writeKeyFile(t, []byte(`{"type":"bulwark-test","keyslots":["1"],"note":"ignored"}`))
				mustCryptsetup(t, "token", "import", "--json-file", tok, img)
			}
			want := dumpVolumeKey(t, img, pass)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			h, err := Read(f)
			if err != nil {
				t.Fatal(err)
			}
			uuid := strings.TrimSpace(mustCryptsetup(t, "luksUUID", img))
			if h.UUID != uuid {
				t.Fatalf("UUID %q, cryptsetup says %q", h.UUID, uuid)
			}
			if _, err := h.Segment(); err != nil {
				t.Fatal(err)
			}
			key := make([]byte, len(want))
			id, err := h.Unlock(f, []byte("first passphrase"), key)
			if v.unsupported != "" {
				if err == nil || !strings.Contains(err.Error(), v.unsupported) {
					t.Fatalf("unlock of an unsupported keyslot: got %v, want an error naming %s", err, v.unsupported)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(key, want) {
				t.Fatalf("keyslot %s unlocked to %x, cryptsetup says %x", id, key, want)
			}
			if v.addKey {
				id, err := h.Unlock(f, []byte("second passphrase"), key)
				if err != nil || id != "1" || !bytes.Equal(key, want) {
					t.Fatalf("second keyslot: id %s err %v", id, err)
				}
				if len(h.Meta.Tokens) != 1 {
					t.Fatalf("tokens: %v", h.Meta.Tokens)
				}
			}
		})
	}
}

// rewriteHeaders lets a test change the JSON metadata of both copies and
// writes them back with valid checksums, to reach the semantic checks.
func rewriteHeaders(t *testing.T, img string, edit func(m map[string]any)) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct {
		off   int64
		magic [6]byte
	}{{0, magicPrimary}, {HeaderSize, magicSecondary}} {
		bh, text, err := readHeaderCopy(f, c.off, c.magic)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(text, &m); err != nil {
			t.Fatal(err)
		}
		edit(m)
		text, _ = json.Marshal(m)
		if _, err := f.WriteAt(encodeHeaderCopy(bh, text), c.off); err != nil {
			t.Fatal(err)
		}
	}
}

func corrupt(t *testing.T, img string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, img string) (*Header, error) {
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Read(f)
}

func TestCorruptHeaders(t *testing.T) {
	cases := []struct {
		name    string
		damage  func(t *testing.T, img string)
		wantErr string
		noHdr   bool
	}{
		{"blank device", func(t *testing.T, img string) {
			corrupt(t, img, 0, make([]byte, 2*HeaderSize))
		}, "no LUKS2 header", true},
		{"wrong magic in both copies", func(t *testing.T, img string) {
			corrupt(t, img, 0, []byte("XUKS"))
			corrupt(t, img, HeaderSize, []byte("XKUL"))
		}, "no LUKS2 header", true},
		{"bad checksum in both copies", func(t *testing.T, img string) {
			corrupt(t, img, BinaryHeaderSize+2, []byte("x"))
			corrupt(t, img, HeaderSize+BinaryHeaderSize+2, []byte("x"))
		}, "checksum mismatch", false},
		{"bad JSON with good checksums", func(t *testing.T, img string) {
			f, _ := os.OpenFile(img, os.O_RDWR, 0)
			defer f.Close()
			for _, c := range []struct {
				off   int64
				magic [6]byte
			}{{0, magicPrimary}, {HeaderSize, magicSecondary}} {
				bh, _, _ := readHeaderCopy(f, c.off, c.magic)
				f.WriteAt(encodeHeaderCopy(bh, []byte(`{"keyslots": {`)), c.off)
			}
		}, "JSON metadata", false},
		{"overlapping keyslot areas", func(t *testing.T, img string) {
			rewriteHeaders(t, img, func(m map[string]any) {
				ks := m["keyslots"].(map[string]any)
				second := map[string]any{}
				b, _ := json.Marshal(ks["0"])
				json.Unmarshal(b, &second)
				second["area"].(map[string]any)["offset"] = "40960"
				ks["1"] = second
			})
		}, "overlaps", false},
		{"segment inside the keyslots area", func(t *testing.T, img string) {
			rewriteHeaders(t, img, func(m map[string]any) {
				m["segments"].(map[string]any)["0"].(map[string]any)["offset"] = "1048576"
			})
		}, "inside the metadata", false},
		{"json_size disagrees", func(t *testing.T, img string) {
			rewriteHeaders(t, img, func(m map[string]any) {
				m["config"].(map[string]any)["json_size"] = "4096"
			})
		}, "json_size", false},
		{"digest names a missing keyslot", func(t *testing.T, img string) {
			rewriteHeaders(t, img, func(m map[string]any) {
				m["digests"].(map[string]any)["0"].(map[string]any)["keyslots"] = []string{"7"}
			})
		}, "keyslot 7", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, _, _, _ := formatImage(t, 20<<20, Options{})
			c.damage(t, img)
			_, err := readFile(t, img)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, c.wantErr)
			}
			if errors.Is(err, ErrNoHeader) != c.noHdr {
				t.Fatalf("errors.Is(ErrNoHeader) = %v for %v", !c.noHdr, err)
			}
			if _, cerr := cryptsetup(t, "isLuks", img); cerr == nil && c.noHdr {
				t.Fatalf("cryptsetup accepts what we call headerless")
			}
		})
	}
	t.Run("truncated", func(t *testing.T) {
		img, _, _, _ := formatImage(t, 20<<20, Options{})
		if err := os.Truncate(img, 10<<10); err != nil {
			t.Fatal(err)
		}
		_, err := readFile(t, img)
		if err == nil || !strings.Contains(err.Error(), "too short") {
			t.Fatalf("got %v", err)
		}
	})
}

// A damaged primary header falls back to the secondary, as cryptsetup does.
func TestPrimaryFallsBackToSecondary(t *testing.T) {
	img, key, pass, h := formatImage(t, 20<<20, Options{})
	corrupt(t, img, 100, []byte("damage"))
	rh, err := readFile(t, img)
	if err != nil {
		t.Fatal(err)
	}
	if !rh.FromSecondary || rh.PrimaryErr == nil || rh.UUID != h.UUID {
		t.Fatalf("FromSecondary %v PrimaryErr %v UUID %s", rh.FromSecondary, rh.PrimaryErr, rh.UUID)
	}
	f, _ := os.Open(img)
	defer f.Close()
	buf := make([]byte, KeySize)
	if _, err := rh.Unlock(f, pass, buf); err != nil || !bytes.Equal(buf, key) {
		t.Fatalf("unlock via secondary: %v", err)
	}
	// cryptsetup reads it too (it repairs the primary in memory only).
	if got := dumpVolumeKey(t, img, writeKeyFile(t, pass)); !bytes.Equal(got, key) {
		t.Fatal("cryptsetup recovered another key from the secondary header")
	}
}

// A damaged secondary leaves the primary in use, and is reported.
func TestDamagedSecondaryReported(t *testing.T) {
	img, _, _, h := formatImage(t, 20<<20, Options{})
	corrupt(t, img, HeaderSize+BinaryHeaderSize+10, []byte("damage"))
	rh, err := readFile(t, img)
	if err != nil {
		t.Fatal(err)
	}
	if rh.FromSecondary || rh.UUID != h.UUID || rh.SecondaryErr == nil || !strings.Contains(rh.SecondaryErr.Error(), "checksum") {
		t.Fatalf("FromSecondary %v UUID %s SecondaryErr %v", rh.FromSecondary, rh.UUID, rh.SecondaryErr)
	}
}

func TestFormatRejectsBadInput(t *testing.T) {
	key, pass := random(t, KeySize), random(t, KeySize)
	var w discard
	cases := []struct {
		name    string
		size    int64
		key     []byte
		o       Options
		wantErr string
	}{
		{"short key", 32 << 20, key[:32], Options{}, "volume key is 32 bytes"},
		{"tiny device", 16 << 20, key, Options{}, "too small"},
		{"odd sector", 32 << 20, key, Options{SectorSize: 1024}, "sector size 1024"},
		{"unaligned data area", 32<<20 + 512, key, Options{SectorSize: 4096}, "not a multiple"},
		{"bad uuid", 32 << 20, key, Options{UUID: "not-a-uuid"}, "canonical"},
		{"long label", 32 << 20, key, Options{Label: strings.Repeat("l", 48)}, "label"},
	}
	for _, c := range cases {
		if _, err := Format(w, c.size, c.key, pass, c.o); err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.wantErr)
		}
	}
	if SectorSizeFor(32<<20+512, 512) != 512 || SectorSizeFor(32<<20, 512) != 4096 {
		t.Error("SectorSizeFor")
	}
}

type discard struct{}

func (discard) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }

// Our pbkdf2 (which writes into caller-owned memory) agrees with the
// standard library's.
func TestPBKDF2MatchesStdlib(t *testing.T) {
	for _, n := range []int{1, 32, 64, 100} {
		pass, salt := random(t, 17), random(t, 32)
		want, err := pbkdf2.Key(sha256.New, string(pass), salt, 1000, n)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, n)
		pbkdf2Into(sha256.New, pass, salt, 1000, got)
		if !bytes.Equal(got, want) {
			t.Fatalf("len %d: %x != %x", n, got, want)
		}
	}
}

func TestAFRoundTrip(t *testing.T) {
	key := random(t, 64)
	split := make([]byte, 64*10)
	if err := afSplit(sha256.New(), rand.Reader, key, 10, split); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64)
	afMerge(sha256.New(), split, 10, got)
	if !bytes.Equal(got, key) {
		t.Fatal("merge(split(key)) != key")
	}
	split[5] ^= 1
	afMerge(sha256.New(), split, 10, got)
	if bytes.Equal(got, key) {
		t.Fatal("a damaged stripe still gives the key")
	}
}
