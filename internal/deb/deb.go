// Package deb reads Debian binary packages (.deb) without dpkg, and asks
// apt for package sets and the files of exact versions.
//
// A .deb is an ar archive of three members: debian-binary ("2.0\n"),
// control.tar[.xz|.zst|.gz] (the package's metadata: control, md5sums,
// shlibs, symbols, maintainer scripts) and data.tar[.xz|.zst|.gz|.bz2]
// (the files). Nothing here runs a maintainer script: the system image is
// made of files only.
package deb

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// member is one ar member: its name and where its bytes are in the file.
type member struct {
	name        string
	offset, len int64
}

// Package is an open .deb file.
type Package struct {
	Path    string
	f       *os.File
	members []member
}

// Open opens a .deb and reads its ar index.
func Open(path string) (*Package, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("deb: %w", err)
	}
	p := &Package{Path: path, f: f}
	if err := p.readIndex(); err != nil {
		f.Close()
		return nil, fmt.Errorf("deb: %s: %w", path, err)
	}
	return p, nil
}

// Close closes the file.
func (p *Package) Close() error { return p.f.Close() }

func (p *Package) readIndex() error {
	st, err := p.f.Stat()
	if err != nil {
		return err
	}
	magic := make([]byte, 8)
	if _, err := p.f.ReadAt(magic, 0); err != nil || string(magic) != "!<arch>\n" {
		return errors.New("not an ar archive")
	}
	off := int64(8)
	hdr := make([]byte, 60)
	for off < st.Size() {
		if _, err := p.f.ReadAt(hdr, off); err != nil {
			return fmt.Errorf("ar header at %d: %w", off, err)
		}
		if string(hdr[58:60]) != "`\n" {
			return fmt.Errorf("ar header at %d: bad terminator", off)
		}
		name := strings.TrimRight(strings.TrimSpace(string(hdr[0:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 || off+60+size > st.Size() {
			return fmt.Errorf("ar member %q: bad size %q", name, strings.TrimSpace(string(hdr[48:58])))
		}
		p.members = append(p.members, member{name: name, offset: off + 60, len: size})
		off += 60 + size + size%2 // members are padded to an even length
	}
	if len(p.members) < 3 || p.members[0].name != "debian-binary" {
		return errors.New("not a Debian package (no debian-binary first)")
	}
	b := make([]byte, p.members[0].len)
	if _, err := p.f.ReadAt(b, p.members[0].offset); err != nil {
		return err
	}
	if !strings.HasPrefix(string(b), "2.") {
		return fmt.Errorf("package format %q; only 2.x is known", strings.TrimSpace(string(b)))
	}
	return nil
}

// tarMember opens the member whose name starts with prefix ("control.tar"
// or "data.tar") as a tar stream, decompressed according to its suffix.
func (p *Package) tarMember(prefix string) (*tar.Reader, func(), error) {
	for _, m := range p.members {
		if !strings.HasPrefix(m.name, prefix) {
			continue
		}
		var r io.Reader = bufio.NewReaderSize(io.NewSectionReader(p.f, m.offset, m.len), 1<<16)
		done := func() {}
		switch strings.TrimPrefix(m.name, prefix) {
		case "":
		case ".xz":
			xr, err := xz.NewReader(r)
			if err != nil {
				return nil, nil, fmt.Errorf("deb: %s: %s: %w", p.Path, m.name, err)
			}
			r = xr
		case ".zst":
			zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
			if err != nil {
				return nil, nil, fmt.Errorf("deb: %s: %s: %w", p.Path, m.name, err)
			}
			r, done = zr, zr.Close
		case ".gz":
			gr, err := gzip.NewReader(r)
			if err != nil {
				return nil, nil, fmt.Errorf("deb: %s: %s: %w", p.Path, m.name, err)
			}
			r = gr
		case ".bz2":
			r = bzip2.NewReader(r)
		default:
			return nil, nil, fmt.Errorf("deb: %s: member %s: unknown compression", p.Path, m.name)
		}
		return tar.NewReader(r), done, nil
	}
	return nil, nil, fmt.Errorf("deb: %s: no %s member", p.Path, prefix)
}

// Control returns the files of control.tar (control, md5sums, shlibs,
// symbols, ...), by name without the leading "./". Maintainer scripts are
// returned too, and never run.
func (p *Package) Control() (map[string][]byte, error) {
	tr, done, err := p.tarMember("control.tar")
	if err != nil {
		return nil, err
	}
	defer done()
	out := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("deb: %s: control.tar: %w", p.Path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if h.Size > 64<<20 {
			return nil, fmt.Errorf("deb: %s: control file %s of %d bytes", p.Path, h.Name, h.Size)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("deb: %s: control.tar: %w", p.Path, err)
		}
		out[strings.TrimPrefix(h.Name, "./")] = b
	}
}

// Data calls fn for every entry of data.tar, in archive order, with a
// reader of its contents (regular files only).
func (p *Package) Data(fn func(h *tar.Header, r io.Reader) error) error {
	tr, done, err := p.tarMember("data.tar")
	if err != nil {
		return err
	}
	defer done()
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("deb: %s: data.tar: %w", p.Path, err)
		}
		if err := fn(h, tr); err != nil {
			return err
		}
	}
}

// Sonames reads the shared-library names a package declares it provides,
// from its shlibs and symbols control files (the files dpkg-shlibdeps
// reads): "libz 1 zlib1g" in shlibs is libz.so.1, "libfoo-2.5 0 ..." is
// libfoo-2.5.so.0, and a symbols file names each soname on its header
// lines ("libz.so.1 zlib1g #MINVER#").
func Sonames(control map[string][]byte) []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, line := range strings.Split(string(control["shlibs"]), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasSuffix(f[0], ":") { // "udeb: ..." lines
			continue
		}
		add(f[0] + ".so." + f[1])
		// A soname with the version before .so (libfoo-1.2.so) is
		// written "libfoo-1.2" with an empty version by some packages.
		add(f[0] + "-" + f[1] + ".so")
	}
	for _, line := range strings.Split(string(control["symbols"]), "\n") {
		if line == "" || line[0] == ' ' || line[0] == '\t' || line[0] == '|' || line[0] == '*' || line[0] == '#' {
			continue
		}
		if f := strings.Fields(line); len(f) >= 2 {
			add(f[0])
		}
	}
	return out
}

// Files lists the regular files md5sums names, as absolute paths.
func Files(control map[string][]byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(control["md5sums"]))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// "<32 hex digits>  path"
		line := sc.Text()
		if len(line) > 34 {
			out = append(out, "/"+strings.TrimLeft(line[34:], " "))
		}
	}
	return out
}
