package luks2

import (
	"os"
	"strings"
	"testing"
)

// TestUnlockRefusesHostileBounds: a header Read accepts may still carry a
// stripe count whose product with the key size wraps, or an iteration
// count that would hang the caller; Unlock refuses both with an error
// naming the keyslot instead of panicking or spinning.
func TestUnlockRefusesHostileBounds(t *testing.T) {
	img, _, pass, _ := formatImage(t, 20<<20, Options{})
	for _, c := range []struct {
		name string
		edit func(*Keyslot)
	}{
		{"stripes that wrap", func(k *Keyslot) { k.AF.Stripes = 1<<58 + 1 }},
		{"huge iterations", func(k *Keyslot) { k.KDF.Iterations = 1 << 40 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			rh, err := readFile(t, img)
			if err != nil {
				t.Fatal(err)
			}
			for id, ks := range rh.Meta.Keyslots {
				c.edit(&ks)
				rh.Meta.Keyslots[id] = ks
			}
			f, _ := os.Open(img)
			defer f.Close()
			_, err = rh.Unlock(f, pass, make([]byte, KeySize))
			if err == nil || !strings.Contains(err.Error(), "keyslot") {
				t.Fatalf("Unlock: %v; want an error naming the keyslot", err)
			}
		})
	}
}
