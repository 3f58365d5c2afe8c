package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type vector struct {
	File            string `json:"file"`
	PlaintextLen    int    `json:"plaintext_len"`
	PlaintextSHA256 string `json:"plaintext_sha256"`
	Error           string `json:"error"`
}

// TestVectors reads the committed vectors (testdata/gen): the good ones
// open to their plaintext, the bad ones fail with their error and release
// no byte of the chunk that is bad.
func TestVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(raw, &vs); err != nil {
		t.Fatal(err)
	}
	k, _ := testKeys()
	kr := keyring(t, k)
	var good, bad int
	for _, v := range vs {
		seg, err := os.ReadFile(filepath.Join("testdata", v.File))
		if err != nil {
			t.Fatal(err)
		}
		got, err := open(kr, seg, 2)
		if v.Error == "" {
			good++
			sum := sha256.Sum256(got)
			if err != nil || len(got) != v.PlaintextLen || hex.EncodeToString(sum[:]) != v.PlaintextSHA256 {
				t.Errorf("%s: %d bytes, %v", v.File, len(got), err)
			}
			continue
		}
		bad++
		if err == nil || !strings.Contains(err.Error(), v.Error) {
			t.Errorf("%s: error %v, want %q", v.File, err, v.Error)
		}
		if !bytes.Equal(got, TestPattern(len(got))) {
			t.Errorf("%s: released bytes that are not the plaintext", v.File)
		}
	}
	if good < 5 || bad < 10 {
		t.Fatalf("only %d good and %d bad vectors", good, bad)
	}
}
