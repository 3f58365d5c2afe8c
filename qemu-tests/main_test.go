// Package qemutests boots real bulwark images under QEMU and checks, from
// outside the VM, each promise the image makes. Run through make test, as
// root, after make image.
package qemutests

import (
	"os"
	"testing"

	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// image returns the image built by make image.
func image(t testing.TB) harness.Image {
	t.Helper()
	img, err := harness.ImageFromDir("../out")
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func example(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../docs/examples/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
