package backup

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestLegacy decrypts pghoa1 files made by an independent implementation
// (Python's cryptography package, testdata/legacy/make-pghoa1.py) and
// refuses altered and truncated ones without writing a byte.
func TestLegacy(t *testing.T) {
	k, other := testKeys()
	dir := t.TempDir()
	pub, err := PublicKeyPEM(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(dir, "pub.pem")
	os.WriteFile(pubFile, pub, 0o644)
	make := func(plain []byte) []byte {
		in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
		os.WriteFile(in, plain, 0o644)
		cmd := exec.Command("/usr/bin/python3", "testdata/legacy/make-pghoa1.py", pubFile, in, out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make-pghoa1.py: %v\n%s", err, b)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	decrypt := func(file []byte, key any) ([]byte, error) {
		var out bytes.Buffer
		priv := k
		if key != nil {
			priv = other
		}
		err := DecryptLegacy(bytes.NewReader(file), int64(len(file)), priv, &out)
		return out.Bytes(), err
	}
	for _, n := range []int{0, 1, 15, 16, 17, 1 << 20} {
		plain := TestPattern(n)
		file := make(plain)
		got, err := decrypt(file, nil)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("n=%d: %d bytes, %v", n, len(got), err)
		}
	}
	file := make(TestPattern(5000))
	flip := func(off int) []byte {
		b := bytes.Clone(file)
		b[off] ^= 1
		return b
	}
	for _, tc := range []struct {
		name string
		file []byte
		want string
	}{
		{"magic", flip(0), "bad magic"},
		{"wrapped key", flip(100), "does not decrypt"},
		{"ciphertext", flip(len(file) - 100), "does not match"},
		{"tag", flip(len(file) - 1), "does not match"},
		{"truncated", file[:len(file)-1], "does not match"},
		{"trailing byte", append(bytes.Clone(file), 0), "does not match"},
		{"header only", file[:8+384], "does not fit"},
		{"short", file[:5], "too short"},
	} {
		got, err := decrypt(tc.file, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || len(got) != 0 {
			t.Errorf("%s: %d bytes out, error %v, want %q", tc.name, len(got), err, tc.want)
		}
	}
	if got, err := decrypt(file, "other"); err == nil || len(got) != 0 {
		t.Errorf("wrong key: %d bytes, %v", len(got), err)
	}
}
