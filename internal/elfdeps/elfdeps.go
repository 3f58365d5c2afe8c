// Package elfdeps finds the shared libraries and the program interpreter an
// ELF executable needs, by reading ELF headers (PT_INTERP, DT_NEEDED,
// DT_RUNPATH) instead of running the dynamic loader: the image build never
// executes the binaries it packs.
package elfdeps

import (
	"debug/elf"
	"fmt"
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
	seen := map[string]bool{}
	var out []string
	var visit func(path string, runpath []string) error
	visit = func(path string, inherited []string) error {
		f, err := elf.Open(path)
		if err != nil {
			return fmt.Errorf("elfdeps: %s: %w", path, err)
		}
		defer f.Close()
		if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
			return fmt.Errorf("elfdeps: %s: not an x86-64 ELF file", path)
		}
		for _, p := range f.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			buf := make([]byte, p.Filesz)
			if _, err := p.ReadAt(buf, 0); err != nil {
				return fmt.Errorf("elfdeps: %s: reading PT_INTERP: %w", path, err)
			}
			interp := strings.TrimRight(string(buf), "\x00")
			if !seen[interp] {
				seen[interp] = true
				out = append(out, interp)
			}
		}
		needed, err := f.DynString(elf.DT_NEEDED)
		if err != nil {
			// A static executable has no dynamic section.
			return nil
		}
		runpath, _ := f.DynString(elf.DT_RUNPATH)
		if len(runpath) == 0 {
			runpath, _ = f.DynString(elf.DT_RPATH)
		}
		var dirs []string
		for _, rp := range runpath {
			for _, d := range strings.Split(rp, ":") {
				dirs = append(dirs, strings.ReplaceAll(d, "$ORIGIN", filepath.Dir(path)))
			}
		}
		dirs = append(dirs, inherited...)
		for _, lib := range needed {
			found := ""
			for _, d := range append(dirs, libDirs...) {
				cand := filepath.Join(d, lib)
				if st, err := os.Stat(cand); err == nil && st.Mode().IsRegular() {
					found = cand
					break
				}
			}
			if found == "" {
				return fmt.Errorf("elfdeps: %s needs %s, which is in none of %s", path, lib, strings.Join(libDirs, ":"))
			}
			if seen[found] {
				continue
			}
			seen[found] = true
			out = append(out, found)
			if err := visit(found, nil); err != nil {
				return err
			}
		}
		return nil
	}
	for _, exe := range executables {
		if err := visit(exe, nil); err != nil {
			return nil, err
		}
	}
	slices.Sort(out)
	return out, nil
}
