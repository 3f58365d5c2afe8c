package imagebuild

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/bulwarkvm/bulwark/internal/elfdeps"
)

// sysTree is the system image's file tree in memory, keyed by the path
// each entry has on the running node (/usr/...). It is the node's /usr:
// Debian packages still ship files under /lib, /bin and /sbin, which on a
// merged-/usr system (Debian's since bookworm, and the initramfs's) are
// symbolic links into /usr, so those paths are moved under /usr as the
// usrmerge package does.
type sysTree struct {
	m map[string]*sysEntry
	// dropped counts, by reason, what extracting a package left out.
	dropped map[string]DropCount
}

type sysEntry struct {
	mode fs.FileMode // type bits and permissions
	data []byte      // regular files
	link string      // symbolic links: the target; hard links: the node path of the file
	hard bool
	pkg  string // the package it came from
}

func newSysTree() *sysTree {
	return &sysTree{m: map[string]*sysEntry{"/usr": {mode: fs.ModeDir | 0o755}}}
}

// mergedDirs are the top-level directories that are links into /usr on a
// merged-/usr system.
var mergedDirs = []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// nodePath turns a path as a package names it ("./lib/x86_64-linux-gnu/libc.so.6")
// into the node's path under /usr ("/usr/lib/x86_64-linux-gnu/libc.so.6");
// ok is false for paths outside /usr (/etc, /var), which the image does
// not carry.
func nodePath(name string) (string, bool) {
	p := path.Clean("/" + strings.TrimPrefix(name, "./"))
	first, _, _ := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	if slices.Contains(mergedDirs, first) {
		p = "/usr" + p
	}
	return p, p == "/usr" || strings.HasPrefix(p, "/usr/")
}

// canonicalTarget rewrites an absolute link target the same way, so that
// the image resolves within itself (/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
// becomes /usr/lib/...). Relative targets stay as they are.
func canonicalTarget(target string) string {
	if !strings.HasPrefix(target, "/") {
		return target
	}
	if p, ok := nodePath(target); ok {
		return p
	}
	return target
}

// parents creates the directories above p.
func (t *sysTree) parents(p string) {
	for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
		if _, ok := t.m[d]; ok {
			continue
		}
		t.m[d] = &sysEntry{mode: fs.ModeDir | 0o755}
	}
}

// put adds an entry. The same path from two packages is accepted only
// when both are the same (directories always merge).
func (t *sysTree) put(p string, e *sysEntry) error {
	if old, ok := t.m[p]; ok {
		switch {
		case old.mode.IsDir() && e.mode.IsDir():
			return nil
		case old.mode == e.mode && old.link == e.link && old.hard == e.hard && bytes.Equal(old.data, e.data):
			return nil
		default:
			return fmt.Errorf("%s is in both %s and %s, and differs", p, old.pkg, e.pkg)
		}
	}
	t.parents(p)
	t.m[p] = e
	return nil
}

// resolve follows symbolic links in the tree as the kernel would on the
// node, and returns the path of the entry path names, and that entry.
func (t *sysTree) resolve(p string) (string, *sysEntry, error) {
	p, ok := nodePath(p)
	if !ok {
		return "", nil, fmt.Errorf("%s: %w", p, fs.ErrNotExist)
	}
	for hops := 0; hops < 40; {
		parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
		cur := ""
		restarted := false
		for i, part := range parts {
			cur += "/" + part
			e, ok := t.m[cur]
			if !ok {
				return "", nil, fmt.Errorf("%s: %w", cur, fs.ErrNotExist)
			}
			if e.mode&fs.ModeSymlink != 0 {
				hops++
				target := e.link
				if !strings.HasPrefix(target, "/") {
					target = path.Join(path.Dir(cur), target)
				}
				rest := strings.Join(parts[i+1:], "/")
				np, ok := nodePath(path.Join(target, rest))
				if !ok {
					return "", nil, fmt.Errorf("%s leads out of the image to %s: %w", p, np, fs.ErrNotExist)
				}
				p, restarted = np, true
				break
			}
			if i < len(parts)-1 && !e.mode.IsDir() {
				return "", nil, fmt.Errorf("%s: not a directory", cur)
			}
		}
		if !restarted {
			e := t.m[p]
			if e.hard {
				return t.resolve(e.link)
			}
			return p, e, nil
		}
	}
	return "", nil, fmt.Errorf("%s: too many levels of symbolic links", p)
}

// chain returns every path resolving p visits: each symbolic link and the
// file it ends at, so that copying them reproduces the name in another
// tree.
func (t *sysTree) chain(p string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var walk func(p string, depth int) error
	walk = func(p string, depth int) error {
		if depth > 40 {
			return fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		p, _ = nodePath(p)
		parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
		cur := ""
		for i, part := range parts {
			cur += "/" + part
			e, ok := t.m[cur]
			if !ok {
				return fmt.Errorf("%s: %w", cur, fs.ErrNotExist)
			}
			if e.mode&fs.ModeSymlink != 0 {
				if !seen[cur] {
					seen[cur] = true
					out = append(out, cur)
				}
				target := e.link
				if !strings.HasPrefix(target, "/") {
					target = path.Join(path.Dir(cur), target)
				}
				return walk(path.Join(target, strings.Join(parts[i+1:], "/")), depth+1)
			}
		}
		e := t.m[p]
		if e.hard {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
			return walk(e.link, depth+1)
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
		return nil
	}
	return out, walk(p, 0)
}

// Open makes the tree an elfdeps.Tree.
func (t *sysTree) Open(p string) (elfdeps.File, error) {
	_, e, err := t.resolve(p)
	if err != nil {
		return nil, err
	}
	if !e.mode.IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	return nopCloser{bytes.NewReader(e.data)}, nil
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// paths returns the tree's paths, sorted.
func (t *sysTree) paths() []string {
	ps := make([]string, 0, len(t.m))
	for p := range t.m {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// writeTar writes the tree as a tar stream whose root is /usr, entries in
// sorted order, owned by root, all times the same: what mksquashfs -tar
// reads. Hard links stay hard links.
func (t *sysTree) writeTar(w io.Writer, mtime int64) error {
	tw := tar.NewWriter(w)
	for _, p := range t.paths() {
		if p == "/usr" {
			continue
		}
		e := t.m[p]
		h := &tar.Header{Name: strings.TrimPrefix(p, "/usr/"), Mode: int64(e.mode.Perm()), Uname: "root", Gname: "root",
			Format: tar.FormatPAX}
		h.ModTime = unixTime(mtime)
		if e.mode&fs.ModeSetuid != 0 {
			h.Mode |= 0o4000
		}
		if e.mode&fs.ModeSetgid != 0 {
			h.Mode |= 0o2000
		}
		if e.mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		switch {
		case e.mode.IsDir():
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		case e.mode&fs.ModeSymlink != 0:
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		case e.hard:
			h.Typeflag, h.Linkname = tar.TypeLink, strings.TrimPrefix(e.link, "/usr/")
		case e.mode.IsRegular():
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		default:
			return fmt.Errorf("%s: unsupported file type %v", p, e.mode.Type())
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// isELF reports whether an entry is an x86-64 executable or shared object
// (the files whose libraries the image must carry).
func isELF(e *sysEntry) bool {
	if !e.mode.IsRegular() || e.hard || len(e.data) < 20 || !bytes.HasPrefix(e.data, []byte("\x7fELF")) {
		return false
	}
	// EI_CLASS 64-bit, little-endian, e_type ET_EXEC or ET_DYN, e_machine x86-64.
	typ := uint16(e.data[16]) | uint16(e.data[17])<<8
	mach := uint16(e.data[18]) | uint16(e.data[19])<<8
	return e.data[4] == 2 && e.data[5] == 1 && (typ == 2 || typ == 3) && mach == 62
}

var errNoProvider = errors.New("no package of the closure provides it")
