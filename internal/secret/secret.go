// Package secret holds key material in memory that the kernel never swaps
// out (mlock), that core dumps leave out (MADV_DONTDUMP), and that is
// zeroed before it is given back. Every key the node draws lives in one of
// these buffers from the moment it is drawn until it is destroyed.
package secret

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Buf is a locked, page-aligned buffer. Its zero value is unusable; make
// one with New or Random.
type Buf struct {
	mu   sync.Mutex
	page []byte // the whole mapping
	n    int    // bytes in use
}

// New maps n bytes of anonymous memory, locks it into RAM and excludes it
// from core dumps. It fails closed: if the memory cannot be locked, no
// buffer is returned.
func New(n int) (*Buf, error) {
	if n <= 0 {
		return nil, fmt.Errorf("secret: invalid size %d", n)
	}
	ps := os.Getpagesize()
	size := (n + ps - 1) / ps * ps
	page, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("secret: mapping %d bytes: %w", size, err)
	}
	if err := unix.Mlock(page); err != nil {
		unix.Munmap(page)
		return nil, fmt.Errorf("secret: locking %d bytes in memory: %w", size, err)
	}
	if err := unix.Madvise(page, unix.MADV_DONTDUMP); err != nil {
		unix.Munlock(page)
		unix.Munmap(page)
		return nil, fmt.Errorf("secret: excluding memory from core dumps: %w", err)
	}
	// Children forked by the init must not inherit a copy.
	if err := unix.Madvise(page, unix.MADV_DONTFORK); err != nil {
		unix.Munlock(page)
		unix.Munmap(page)
		return nil, fmt.Errorf("secret: excluding memory from forks: %w", err)
	}
	return &Buf{page: page, n: n}, nil
}

// Random returns a locked buffer of n bytes from the kernel's CSPRNG
// (getrandom, which blocks until the pool is initialised), with the
// mixer's randomness combined in when one is set.
func Random(n int) (*Buf, error) {
	b, err := New(n)
	if err != nil {
		return nil, err
	}
	if err := Fill(b.Bytes()); err != nil {
		b.Destroy()
		return nil, err
	}
	mixMu.Lock()
	m := mixer
	mixMu.Unlock()
	if m != nil {
		if err := m(b.Bytes()); err != nil {
			b.Destroy()
			return nil, fmt.Errorf("secret: mixing in extra randomness: %w", err)
		}
	}
	return b, nil
}

var (
	mixMu sync.Mutex
	mixer func(p []byte) error
)

// SetMixer makes every later Random call pass its kernel bytes through m,
// which must combine more randomness into p in place (the TPM's, see
// internal/tpm) and never merely replace it. A failing mixer fails the
// draw: no key is made without it once it is set.
func SetMixer(m func(p []byte) error) {
	mixMu.Lock()
	defer mixMu.Unlock()
	mixer = m
}

// Fill fills p from getrandom.
func Fill(p []byte) error {
	for len(p) > 0 {
		n, err := unix.Getrandom(p, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("secret: getrandom: %w", err)
		}
		p = p[n:]
	}
	return nil
}

// Bytes returns the buffer's contents. The slice is valid until Destroy.
func (b *Buf) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.page == nil {
		return nil
	}
	return b.page[:b.n:b.n]
}

// Len is the number of bytes in use.
func (b *Buf) Len() int { return b.n }

// Destroy zeroes the whole mapping, unlocks and unmaps it. It is safe to
// call more than once.
func (b *Buf) Destroy() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.page == nil {
		return
	}
	Zero(b.page)
	unix.Munlock(b.page)
	unix.Munmap(b.page)
	b.page = nil
}

// Zero overwrites p with zeros. It is for the short-lived copies that
// library code (hashes, ciphers) forces onto the Go heap.
func Zero(p []byte) {
	clear(p)
}
