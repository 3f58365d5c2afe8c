// Package elfdeps finds the shared libraries and the program interpreter an
// ELF executable needs, by reading ELF headers (PT_INTERP, DT_NEEDED,
// DT_RUNPATH) instead of running the dynamic loader: the image build never
// executes the binaries it packs.
package elfdeps

import (
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// DefaultLibDirs is the search path of Debian's dynamic loader on amd64,
// in the order ld.so.conf gives it.
var DefaultLibDirs = []string{
	"/usr/local/lib/x86_64-linux-gnu",
	"/lib/x86_64-linux-gnu",
	"/usr/lib/x86_64-linux-gnu",
	"/usr/local/lib",
	"/lib64",
	"/lib",
	"/usr/lib",
}

// Resolve returns the sorted, de-duplicated set of files that the given
// executables need at run time: the interpreter and every shared library,
// transitively. The paths are the ones the loader would open; symlinks are
// kept as the loader names them (for example /lib64/ld-linux-x86-64.so.2),
// and the caller packs them under that name.
func Resolve(executables []string, libDirs []string) ([]string, error) {
	return ResolveIn(Host, executables, libDirs, nil)
}

// File is an open file of a Tree.
type File interface {
	io.ReaderAt
	io.Closer
}

// Tree is the file system the loader will search: the host's (Host), or
// an image being built. Paths are absolute, as the loader names them.
type Tree interface {
	// Open opens the regular file path names, following symbolic links
	// as the kernel would in that tree; it fails when there is none.
	Open(path string) (File, error)
}

// Host is the host's file system.
var Host Tree = hostTree{}

type hostTree struct{}

func (hostTree) Open(path string) (File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return os.Open(path)
}

// Missing is called when a library (its DT_NEEDED name, such as
// libz.so.1) or the interpreter (its path) is in none of the places the
// loader would look. It may put the file into the tree and return nil, and
// the search is made again; an error ends the resolution.
type Missing func(name string) error

// ResolveIn is Resolve in a tree. When a file is missing and missing is
// not nil, it is asked to provide it.
func ResolveIn(t Tree, executables []string, libDirs []string, missing Missing) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	find := func(dirs []string, lib string) string {
		for _, d := range dirs {
			cand := filepath.Join(d, lib)
			if f, err := t.Open(cand); err == nil {
				f.Close()
				return cand
			}
		}
		return ""
	}
	var visit func(path string) error
	visit = func(path string) error {
		f, err := t.Open(path)
		if err != nil {
			return fmt.Errorf("elfdeps: %s: %w", path, err)
		}
		defer f.Close()
		ef, err := elf.NewFile(f)
		if err != nil {
			return fmt.Errorf("elfdeps: %s: %w", path, err)
		}
		if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 {
			return fmt.Errorf("elfdeps: %s: not an x86-64 ELF file", path)
		}
		for _, p := range ef.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			buf := make([]byte, p.Filesz)
			if _, err := p.ReadAt(buf, 0); err != nil {
				return fmt.Errorf("elfdeps: %s: reading PT_INTERP: %w", path, err)
			}
			interp := strings.TrimRight(string(buf), "\x00")
			if seen[interp] {
				continue
			}
			if g, err := t.Open(interp); err == nil {
				g.Close()
			} else if missing == nil {
				return fmt.Errorf("elfdeps: %s: its interpreter %s is missing: %w", path, interp, err)
			} else if err := missing(interp); err != nil {
				return fmt.Errorf("elfdeps: %s: interpreter %s: %w", path, interp, err)
			}
			seen[interp] = true
			out = append(out, interp)
		}
		needed, err := ef.DynString(elf.DT_NEEDED)
		if err != nil {
			// A static executable has no dynamic section.
			return nil
		}
		runpath, _ := ef.DynString(elf.DT_RUNPATH)
		if len(runpath) == 0 {
			runpath, _ = ef.DynString(elf.DT_RPATH)
		}
		var dirs []string
		for _, rp := range runpath {
			for _, d := range strings.Split(rp, ":") {
				dirs = append(dirs, strings.ReplaceAll(d, "$ORIGIN", filepath.Dir(path)))
			}
		}
		dirs = append(dirs, libDirs...)
		for _, lib := range needed {
			found := find(dirs, lib)
			if found == "" && missing != nil {
				if err := missing(lib); err != nil {
					return fmt.Errorf("elfdeps: %s needs %s: %w", path, lib, err)
				}
				found = find(dirs, lib)
			}
			if found == "" {
				return fmt.Errorf("elfdeps: %s needs %s, which is in none of %s", path, lib, strings.Join(libDirs, ":"))
			}
			if seen[found] {
				continue
			}
			seen[found] = true
			out = append(out, found)
			if err := visit(found); err != nil {
				return err
			}
		}
		return nil
	}
	for _, exe := range executables {
		if err := visit(exe); err != nil {
			return nil, err
		}
	}
	slices.Sort(out)
	return out, nil
}
