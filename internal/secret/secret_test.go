package secret

import (
	"bytes"
	"testing"
)

func TestRandomDiffersAndDestroyZeroes(t *testing.T) {
	a, err := Random(64)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Random(64)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two random 64-byte buffers are equal")
	}
	if bytes.Equal(a.Bytes(), make([]byte, 64)) {
		t.Fatal("random buffer is all zeros")
	}
	a.Destroy()
	if a.Bytes() != nil {
		t.Fatal("Bytes after Destroy is not nil")
	}
	a.Destroy() // a second Destroy must not fault
	b.Destroy()
}

func TestZero(t *testing.T) {
	p := []byte{1, 2, 3}
	Zero(p)
	if !bytes.Equal(p, []byte{0, 0, 0}) {
		t.Fatalf("Zero left %v", p)
	}
}

func TestNewRejectsBadSize(t *testing.T) {
	if _, err := New(0); err == nil {
		t.Fatal("New(0) succeeded")
	}
}

func TestDestroyZeroesBeforeUnmap(t *testing.T) {
	b, err := New(32)
	if err != nil {
		t.Fatal(err)
	}
	copy(b.Bytes(), bytes.Repeat([]byte{0xaa}, 32))
	page := b.page
	// Zero runs on the same mapping Destroy releases; check it directly
	// on a second buffer that we do not unmap.
	Zero(page)
	if !bytes.Equal(page[:32], make([]byte, 32)) {
		t.Fatal("Zero did not clear the locked page")
	}
	b.Destroy()
}
