// Package kmod holds the list of kernel modules the node needs, resolves it
// against a kernel's modules.dep when the image is built, and loads it when
// the node boots. Both halves use u-root's kmodule, so the dependency order
// the build packs is the order the init loads.
package kmod

import (
	"bufio"
	"bytes"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"
)

// Module is one module the node loads at boot.
type Module struct {
	Name string
	// Optional modules depend on the CPU or the platform (for example
	// aesni_intel needs the AES instructions); failing to load one is a
	// warning, not a fatal error.
	Optional bool
	// Late modules are loaded after all the others: their init tests
	// algorithms that other modules provide (drbg's self-test needs
	// hmac(sha512)), and the others load in parallel.
	Late bool
	// OnDemand modules are loaded only when a stage asks for them: the
	// config volume's file systems, which a node configured through
	// fw_cfg never mounts.
	OnDemand bool
	// Background modules serve only the stages after the network
	// (volumes, IPsec): the init loads them while the config, firewall
	// and network stages run, and those stages wait for them.
	Background bool
	// Why says what needs it.
	Why string
}

// Modules is the one list of kernel modules in the image. modules.softdep is
// not followed by kmodule, so soft dependencies (ecb for xts, crc32c for ext4)
// are named here explicitly. Modules that Debian builds into the kernel
// (aes, sha256, cbc, tpm_tis, tpm_crb, af_packet) are resolved as built-in.
var Modules = []Module{
	{Name: "virtio_pci", Why: "virtio devices"},
	{Name: "virtio_blk", Why: "data and config disks"},
	{Name: "virtio_net", Why: "network"},
	{Name: "virtio_rng", Why: "entropy from the host"},
	{Name: "qemu_fw_cfg", Why: "config from QEMU fw_cfg"},
	{Name: "evdev", Why: "power button events"},
	{Name: "button", Why: "ACPI power button"},
	{Name: "dm_crypt", Background: true, Why: "encrypted volumes"},
	{Name: "ecb", Background: true, Why: "soft dependency of xts"},
	{Name: "xts", Background: true, Why: "aes-xts-plain64"},
	{Name: "aesni_intel", Background: true, Optional: true, Why: "AES instructions"},
	{Name: "crc32c_generic", Why: "ext4 metadata checksums; libcrc32c (under nf_conntrack) needs it when it loads"},
	{Name: "crc32c_intel", Optional: true, Why: "faster crc32c"},
	{Name: "ext4", Background: true, Why: "data volume filesystem"},
	{Name: "nls_cp437", OnDemand: true, Why: "vfat config volume"},
	{Name: "nls_ascii", OnDemand: true, Why: "vfat config volume"},
	{Name: "nls_utf8", OnDemand: true, Why: "vfat config volume"},
	{Name: "vfat", OnDemand: true, Why: "vfat config volume"},
	{Name: "isofs", OnDemand: true, Why: "iso9660 config volume"},
	{Name: "nf_tables", Why: "firewall"},
	{Name: "nf_conntrack", Why: "firewall state"},
	{Name: "nft_ct", Why: "firewall state"},
	{Name: "nft_reject_inet", Why: "firewall rejects"},
	{Name: "nft_limit", Why: "firewall rate limits"},
	{Name: "xfrm_user", Background: true, Why: "IPsec states and policies"},
	{Name: "esp4", Background: true, Why: "IPsec ESP (IPv4)"},
	{Name: "esp6", Background: true, Why: "IPsec ESP (IPv6)"},
	{Name: "ctr", Background: true, Why: "AES-GCM for ESP"},
	{Name: "ghash_generic", Background: true, Why: "AES-GCM for ESP"},
	{Name: "ghash_clmulni_intel", Background: true, Optional: true, Why: "faster GHASH"},
	{Name: "gcm", Background: true, Why: "AES-GCM for ESP"},
	{Name: "seqiv", Background: true, Why: "ESP IV generation"},
	{Name: "sha512_generic", Background: true, Why: "drbg's HMAC-SHA512 generator"},
	{Name: "drbg", Background: true, Late: true, Why: "ESP IV generation (seqiv seeds its salt from stdrng)"},
	{Name: "echainiv", Background: true, Why: "ESP IV generation"},
	{Name: "authenc", Background: true, Why: "ESP"},
	{Name: "tpm_crb", Why: "TPM 2.0 (CRB interface)"},
	{Name: "tpm_tis", Why: "TPM 2.0 (TIS interface)"},
}

// Names returns the module names of a list.
func Names(mods []Module) []string {
	var n []string
	for _, m := range mods {
		n = append(n, m.Name)
	}
	return n
}

// Resolve returns the module files (relative to /lib/modules/<kver>) that the
// named modules need, dependencies included, sorted. root is the file system
// root holding lib/modules (normally "/"). A module that is built into the
// kernel needs no file.
func Resolve(root, kver string, names []string) ([]string, error) {
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

// CompressedSuffix ends the name of a module file the image carries
// compressed; kmodule decompresses it when it loads the module.
const CompressedSuffix = ".zst"

// BackgroundOnly returns those of files, the list's resolved module files
// (Resolve of all of mods), that only background modules need. Nothing on
// the way to ready loads them, so the image carries them compressed: the
// kernel then unpacks fewer bytes before it starts the init, and the init
// decompresses them on the background loader's thread.
func BackgroundOnly(root, kver string, mods []Module, files []string) ([]string, error) {
	early, onDemand, _ := Split(mods)
	first, err := Resolve(root, kver, append(Names(early), Names(onDemand)...))
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
// CompressedSuffix wherever they appear.
func FilterDep(depFile []byte, files []string, compressed []string) ([]byte, error) {
	keep := map[string]bool{}
	for _, f := range files {
		keep[f] = true
	}
	name := func(f string) string {
		if slices.Contains(compressed, f) {
			return f + CompressedSuffix
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

// load loads the named modules and their dependencies from
// /lib/modules/<running kernel>. The first pass loads all of them, in
// parallel when asked: kmodule's prober loads each module once, after its
// dependencies, and independent modules load side by side (loading is
// mostly signature checks and relocation, which use every CPU). A module
// whose init needs a soft dependency that was not there yet (libcrc32c asks
// the crypto API for crc32c) fails in that pass; the second pass retries
// the failures one by one, in list order, with everything else loaded. It
// returns the names that failed both times with their errors; the caller
// decides which are fatal.
func load(names []string, parallel bool) (map[string]error, error) {
	failed, err := loadPass(names, parallel)
	if err != nil || len(failed) == 0 {
		return failed, err
	}
	var retry []string
	for _, n := range names {
		if _, ok := failed[n]; ok {
			retry = append(retry, n)
		}
	}
	return loadPass(retry, false)
}

// LoadList loads a module list: everything but the late modules first,
// then the late ones. It returns the modules that failed, by name. It
// ignores the Background flag: the caller splits the list (Split).
func LoadList(mods []Module) (map[string]error, error) {
	return loadList(mods, true)
}

// LoadListQuietly loads a list like LoadList, but one module at a time on
// the calling thread at the lowest CPU priority, so that the caller's other
// goroutines, running the boot, come first on a machine with few CPUs.
func LoadListQuietly(mods []Module) (map[string]error, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19); err != nil {
		return nil, fmt.Errorf("kmod: lowering the loader's priority: %w", err)
	}
	defer unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 0)
	return loadList(mods, false)
}

func loadList(mods []Module, parallel bool) (map[string]error, error) {
	var early, late []Module
	for _, m := range mods {
		if m.Late {
			late = append(late, m)
		} else {
			early = append(early, m)
		}
	}
	failed, err := load(Names(early), parallel)
	if err != nil {
		return failed, err
	}
	failedLate, err := load(Names(late), parallel)
	for n, e := range failedLate {
		failed[n] = e
	}
	return failed, err
}

// Split divides a list into the modules the early stages need, the ones
// loaded on demand, and the background ones.
func Split(mods []Module) (early, onDemand, background []Module) {
	for _, m := range mods {
		switch {
		case m.OnDemand:
			onDemand = append(onDemand, m)
		case m.Background:
			background = append(background, m)
		default:
			early = append(early, m)
		}
	}
	return early, onDemand, background
}

func loadPass(names []string, parallel bool) (map[string]error, error) {
	// A fresh prober: kmodule remembers a failure for the prober's lifetime.
	prober, err := kmodule.NewProber(kmodule.ProbeOpts{})
	if err != nil {
		return nil, fmt.Errorf("kmod: %w", err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	failed := map[string]error{}
	probe := func(n string) {
		if err := prober.Probe(n, ""); err != nil {
			mu.Lock()
			failed[n] = err
			mu.Unlock()
		}
	}
	for _, n := range names {
		if !parallel {
			probe(n)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			probe(n)
		}()
	}
	wg.Wait()
	return failed, nil
}

// ParseList reads a module list as the image ships it: one name per line,
// then its flags: optional, late, background, ondemand.
func ParseList(b []byte) ([]Module, error) {
	var mods []Module
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		m := Module{Name: f[0]}
		for _, flag := range f[1:] {
			switch flag {
			case "optional":
				m.Optional = true
			case "late":
				m.Late = true
			case "background":
				m.Background = true
			case "ondemand":
				m.OnDemand = true
			default:
				return nil, fmt.Errorf("kmod: module list line %d: %q is not \"name [optional] [late] [background] [ondemand]\"", i+1, line)
			}
		}
		mods = append(mods, m)
	}
	return mods, nil
}

// FormatList writes a module list in the format ParseList reads.
func FormatList(mods []Module) []byte {
	var b bytes.Buffer
	for _, m := range mods {
		b.WriteString(m.Name)
		if m.Optional {
			b.WriteString(" optional")
		}
		if m.Late {
			b.WriteString(" late")
		}
		if m.Background {
			b.WriteString(" background")
		}
		if m.OnDemand {
			b.WriteString(" ondemand")
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}
