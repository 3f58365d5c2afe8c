// Package objstore stores backup objects: in a local directory (the
// default, also what the host side uses for tests and restores from a
// copy) or, through internal/objstore/s3, in an S3 bucket in the node's
// own region. This package does not import the S3 client, so that what
// imports it for the directory store or the interface does not link it.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

// Object is one stored object.
type Object struct {
	Name string
	Size int64
}

// Store is what the backup encryptor needs of object storage. Names are
// slash-separated and idempotent: putting the same name again replaces the
// object, so a retried upload never leaves two copies.
type Store interface {
	// Put stores size bytes from r under name. r is read from the start
	// again when an attempt is retried. The object appears whole or not
	// at all.
	Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error
	Get(ctx context.Context, name string) (io.ReadCloser, error)
	// List returns the objects whose names start with prefix, sorted.
	List(ctx context.Context, prefix string) ([]Object, error)
	Delete(ctx context.Context, name string) error
	// String names the store for logs and reports (never credentials).
	String() string
}

// ErrNotFound is returned by Get for a missing object.
var ErrNotFound = errors.New("objstore: no such object")

// CheckName refuses names that could escape a prefix or a directory.
func CheckName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || path.Clean(name) != name || strings.HasPrefix(name, "../") || name == ".." || strings.ContainsAny(name, "\\\x00") {
		return fmt.Errorf("objstore: invalid object name %q", name)
	}
	return nil
}

// Retry runs op until it succeeds, fails permanently, or attempts run
// out, waiting with exponential backoff (from first, doubling) between
// attempts. It returns the last error, saying how many attempts were made.
func Retry(ctx context.Context, attempts int, first time.Duration, op func() error) error {
	wait := first
	var err error
	for i := 1; ; i++ {
		if err = op(); err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return p.err
		}
		if i >= attempts {
			return fmt.Errorf("%w (gave up after %d attempts)", err, i)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (stopped after %d attempts: %v)", err, i, ctx.Err())
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// Permanent marks err as one that retrying cannot fix: Retry returns it
// at once. Stores outside this package (internal/objstore/s3) use it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// permanent marks an error that retrying cannot fix.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }
