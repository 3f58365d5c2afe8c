// Package initramfs assembles the node's initramfs: a newc cpio archive
// (written by u-root's cpio package), LZ4-compressed in the legacy frame
// format the kernel reads. PID1 starts only after the kernel has unpacked
// the archive, and under emulation LZ4 unpacks so much faster than zstd
// (let alone gzip) that the larger file still boots about half a second
// sooner (docs/performance.md). The
// output depends only on the entries' names, contents and modes: entries are
// written in sorted order with fixed inode numbers, owners and timestamps, so
// the same inputs give the same bytes.
package initramfs

import (
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pierrec/lz4/v4"
	"github.com/u-root/u-root/pkg/cpio"
)

// Archive is an initramfs being assembled. Parent directories are created
// implicitly with mode 0755.
type Archive struct {
	recs map[string]cpio.Record
	data map[string][]byte
}

// New returns an empty archive.
func New() *Archive {
	return &Archive{recs: map[string]cpio.Record{}, data: map[string][]byte{}}
}

func clean(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

func (a *Archive) put(r cpio.Record, content []byte) error {
	name := clean(r.Name)
	if name == "" {
		return fmt.Errorf("initramfs: empty entry name")
	}
	if old, ok := a.recs[name]; ok {
		if old.Mode == r.Mode && string(a.data[name]) == string(content) {
			return nil
		}
		return fmt.Errorf("initramfs: %s added twice with different contents", name)
	}
	r.Name = name
	a.recs[name] = r
	a.data[name] = content
	return nil
}

// AddFile adds a regular file with the given permission bits.
func (a *Archive) AddFile(name string, content []byte, perm os.FileMode) error {
	return a.put(cpio.Record{Info: cpio.Info{Name: name, Mode: cpio.S_IFREG | uint64(perm.Perm())}}, content)
}

// AddDir adds a directory.
func (a *Archive) AddDir(name string, perm os.FileMode) error {
	return a.put(cpio.Directory(name, uint64(perm.Perm())), nil)
}

// AddSymlink adds a symbolic link.
func (a *Archive) AddSymlink(name, target string) error {
	return a.put(cpio.Record{Info: cpio.Info{Name: name, Mode: cpio.S_IFLNK | 0o777}}, []byte(target))
}

// AddCharDev adds a character device node.
func (a *Archive) AddCharDev(name string, perm os.FileMode, major, minor uint64) error {
	r := cpio.CharDev(name, uint64(perm.Perm()), major, minor)
	return a.put(r, nil)
}

// AddHostPath copies a file from the build host to the same path in the
// archive, reproducing every symbolic link on the way (for example Debian's
// /lib -> usr/lib), so that the dynamic loader finds libraries inside the
// initramfs under the names it was linked against.
func (a *Archive) AddHostPath(p string) error {
	return a.addHostPath(p, 0)
}

func (a *Archive) addHostPath(p string, depth int) error {
	if depth > 40 {
		return fmt.Errorf("initramfs: %s: too many levels of symbolic links", p)
	}
	p = path.Clean(p)
	if !path.IsAbs(p) {
		return fmt.Errorf("initramfs: %s: host paths must be absolute", p)
	}
	// Find the first component that is a symlink.
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i := range parts {
		prefix := "/" + strings.Join(parts[:i+1], "/")
		st, err := os.Lstat(prefix)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if st.Mode()&os.ModeSymlink == 0 {
			continue
		}
		target, err := os.Readlink(prefix)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if err := a.AddSymlink(prefix, target); err != nil {
			return err
		}
		resolved := target
		if !path.IsAbs(target) {
			resolved = path.Join(path.Dir(prefix), target)
		}
		rest := strings.Join(parts[i+1:], "/")
		return a.addHostPath(path.Join(resolved, rest), depth+1)
	}
	st, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("initramfs: %s is not a regular file", p)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return a.AddFile(p, b, st.Mode().Perm())
}

// Entries lists the archive's entry names in the order they are written.
func (a *Archive) Entries() []string {
	a.addParents()
	names := make([]string, 0, len(a.recs))
	for n := range a.recs {
		names = append(names, n)
	}
	// Sorting by name puts every directory before what it contains.
	slices.Sort(names)
	return names
}

// Size returns the total size of the regular files below prefix.
func (a *Archive) Size(prefix string) int64 {
	prefix = clean(prefix)
	var n int64
	for name, r := range a.recs {
		if r.Mode&cpio.S_IFMT == cpio.S_IFREG && (name == prefix || strings.HasPrefix(name, prefix+"/") || prefix == "") {
			n += int64(len(a.data[name]))
		}
	}
	return n
}

func (a *Archive) addParents() {
	for name := range a.recs {
		for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := a.recs[d]; !ok {
				a.recs[d] = cpio.Directory(d, 0o755)
			}
		}
	}
}

// check refuses entries below a symbolic link: the kernel's unpacker would
// not create them where the archive names them.
func (a *Archive) check() error {
	for name := range a.recs {
		for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
			if r := a.recs[d]; r.Mode&cpio.S_IFMT == cpio.S_IFLNK {
				return fmt.Errorf("initramfs: %s lies below the symbolic link %s", name, d)
			}
		}
	}
	return nil
}

// WriteTo writes the LZ4-compressed cpio archive. One encoder goroutine
// and fixed settings keep the output a function of the input alone.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	a.addParents()
	cw := &countWriter{w: w}
	zw := lz4.NewWriter(cw)
	// The legacy frame is the one the kernel's unlz4 reads (what
	// `lz4 -l` writes); Level9 is the high-compression mode.
	if err := zw.Apply(lz4.LegacyOption(true), lz4.CompressionLevelOption(lz4.Level9), lz4.ConcurrencyOption(1)); err != nil {
		return 0, err
	}
	if err := a.check(); err != nil {
		return 0, err
	}
	rw := cpio.Newc.Writer(zw)
	for i, name := range a.Entries() {
		r := a.recs[name]
		content := a.data[name]
		r.Ino = uint64(i + 1)
		r.NLink = 1
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			r.NLink = 2
		}
		r.FileSize = uint64(len(content))
		r.ReaderAt = strings.NewReader(string(content))
		r = cpio.MakeReproducible(r)
		if err := rw.WriteRecord(r); err != nil {
			return cw.n, fmt.Errorf("initramfs: writing %s: %w", name, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return cw.n, err
	}
	if err := zw.Close(); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

// WriteFile writes the archive to a file atomically (a temporary file in the
// same directory, renamed into place), so that a failed build never leaves a
// truncated initramfs behind.
func (a *Archive) WriteFile(dst string) (int64, error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".initramfs-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	n, err := a.WriteTo(tmp)
	if err == nil {
		err = tmp.Close()
	} else {
		tmp.Close()
	}
	if err != nil {
		return 0, err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return 0, err
	}
	return n, os.Rename(tmp.Name(), dst)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
