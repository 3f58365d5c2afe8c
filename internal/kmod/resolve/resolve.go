// Package resolve works out, when the image is built, which module files
// the node's module list (kmod.Modules) needs from a kernel: dependencies
// from the kernel's modules.dep, through u-root's kmodule, and the
// modules.dep the image carries. The init does not link it: loading at
// boot is kmod's.
package resolve

import (
	"bufio"
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/u-root/u-root/pkg/kmodule"

	"github.com/bulwarkvm/bulwark/internal/kmod"
)

// Files returns the module files (relative to /lib/modules/<kver>) that the
// named modules need, dependencies included, sorted. root is the file system
// root holding lib/modules (normally "/"). A module that is built into the
// kernel needs no file.
func Files(root, kver string, names []string) ([]string, error) {
	var mu sync.Mutex
	files := map[string]bool{}
	opts := kmodule.ProbeOpts{
		RootDir:        root,
		KVer:           kver,
		IgnoreProcMods: true,
		// kmodule calls this from several goroutines.
		DryRunCB: func(path string) {
			mu.Lock()
			defer mu.Unlock()
			files[path] = true
		},
	}
	prober, err := kmodule.NewProber(opts)
	if err != nil {
		return nil, fmt.Errorf("kmod: kernel %s: %w", kver, err)
	}
	for _, n := range names {
		if err := prober.Probe(n, ""); err != nil {
			return nil, fmt.Errorf("kmod: kernel %s has no module %q: %w", kver, n, err)
		}
	}
	base := ModuleDir(root, kver)
	var rel []string
	for f := range files {
		r, err := filepath.Rel(base, f)
		if err != nil || strings.HasPrefix(r, "..") {
			return nil, fmt.Errorf("kmod: module %s lies outside %s", f, base)
		}
		rel = append(rel, r)
	}
	slices.Sort(rel)
	return rel, nil
}

// ModuleDir is where a kernel's modules live below root.
func ModuleDir(root, kver string) string {
	return filepath.Join(root, "lib/modules", kver)
}

// BackgroundOnly returns those of files, the list's resolved module files
// (Files of all of mods), that only background modules need, less the
// first ones (the system image's, on every node's way to ready). Nothing
// on the way to ready loads them, so the image carries them compressed: the
// kernel then unpacks fewer bytes before it starts the init, and the init
// decompresses them on the background loader's thread.
func BackgroundOnly(root, kver string, mods []kmod.Module, files []string) ([]string, error) {
	early, onDemand, firstBg, _ := kmod.Split(mods)
	first, err := Files(root, kver, append(append(kmod.Names(early), kmod.Names(onDemand)...), kmod.Names(firstBg)...))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range files {
		if !slices.Contains(first, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// FilterDep returns the lines of modules.dep that describe the given module
// files, so that the image carries a dependency file that names only the
// modules it ships; the files in compressed are named with
// kmod.CompressedSuffix wherever they appear.
func FilterDep(depFile []byte, files []string, compressed []string) ([]byte, error) {
	keep := map[string]bool{}
	for _, f := range files {
		keep[f] = true
	}
	name := func(f string) string {
		if slices.Contains(compressed, f) {
			return f + kmod.CompressedSuffix
		}
		return f
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(depFile))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("kmod: malformed modules.dep line %q", line)
		}
		if !keep[mod] {
			continue
		}
		out.WriteString(name(mod) + ":")
		for _, d := range strings.Fields(deps) {
			if !keep[d] {
				return nil, fmt.Errorf("kmod: %s needs %s, which the image does not carry", mod, d)
			}
			out.WriteString(" " + name(d))
		}
		out.WriteByte('\n')
	}
	return out.Bytes(), sc.Err()
}
