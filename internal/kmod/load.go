package kmod

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// A Loader loads modules from one kernel's module directory, each after
// its dependencies as the directory's modules.dep lists them. One Loader
// serves the whole boot: a module it has loaded is not loaded again, and a
// module that several callers need at once is loaded once while the others
// wait for it.
//
// Plain module files are handed to the kernel by descriptor
// (finit_module(2)): the kernel reads the file itself, so the bytes are
// copied once instead of three times (into the init's memory, grown as it
// reads, then into the kernel). Under emulation those copies were a third
// of the modules stage (docs/performance.md). Compressed files (.gz) are
// decompressed in memory and passed with init_module(2).
type Loader struct {
	dir     string
	files   map[string]string   // module name -> file, relative to dir
	deps    map[string][]string // file -> the files it needs, all of them
	builtin map[string]bool     // module names built into the kernel
	// insert hands one file to the kernel (loadFile; tests record instead).
	insert func(file string) error

	mu       sync.Mutex
	loaded   map[string]bool     // file -> loaded
	inFlight map[string]*loading // file -> being loaded
}

type loading struct {
	done chan struct{}
	err  error
}

// RunningKernelDir is the module directory of the running kernel.
func RunningKernelDir() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("kmod: uname: %w", err)
	}
	return filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:])), nil
}

// NewLoader reads dir's modules.dep and modules.builtin.
func NewLoader(dir string) (*Loader, error) {
	l := &Loader{dir: dir, files: map[string]string{}, deps: map[string][]string{},
		builtin: map[string]bool{}, loaded: map[string]bool{}, inFlight: map[string]*loading{}}
	l.insert = l.loadFile
	dep, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kmod: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(dep))
	for n := 1; sc.Scan(); n++ {
		file, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok || file == "" {
			return nil, fmt.Errorf("kmod: modules.dep line %d: %q is not \"file: dependencies\"", n, sc.Text())
		}
		l.files[moduleName(file)] = file
		l.deps[file] = strings.Fields(deps)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("kmod: modules.dep: %w", err)
	}
	builtin, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("kmod: %w", err)
	}
	for _, f := range strings.Fields(string(builtin)) {
		l.builtin[moduleName(f)] = true
	}
	return l, nil
}

// moduleName is the kernel's name for a module file: the base name
// without its suffixes, with dashes as underscores (dm-crypt.ko is
// dm_crypt).
func moduleName(file string) string {
	base := path.Base(file)
	base, _, _ = strings.Cut(base, ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

// LoadList loads a module list: everything but the late modules first,
// in parallel, then the late ones. It returns the modules that failed, by
// name; the caller decides which failures are fatal. It ignores the
// Background and OnDemand flags: the caller splits the list (Split).
func (l *Loader) LoadList(mods []Module) map[string]error {
	return l.loadList(mods, true)
}

// LoadListQuietly loads a list like LoadList, but one module at a time on
// the calling thread at the lowest CPU priority, so that the caller's other
// goroutines, running the boot, come first on a machine with few CPUs. The
// priority is only a preference: if it cannot be lowered, the list loads
// at the normal one.
func (l *Loader) LoadListQuietly(mods []Module) map[string]error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19) == nil {
		defer unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 0)
	}
	return l.loadList(mods, false)
}

func (l *Loader) loadList(mods []Module, parallel bool) map[string]error {
	var first, late []string
	for _, m := range mods {
		if m.Late {
			late = append(late, m.Name)
		} else {
			first = append(first, m.Name)
		}
	}
	failed := l.load(first, parallel)
	for n, err := range l.load(late, parallel) {
		failed[n] = err
	}
	return failed
}

// load loads the named modules. The first pass loads them all, side by
// side when parallel: loading is mostly signature checks and relocation,
// which use every CPU. A module whose init needs a soft dependency that is
// not there yet (libcrc32c asks the crypto API for crc32c) fails in that
// pass; the second pass retries the failures one by one, in list order,
// with everything else loaded.
func (l *Loader) load(names []string, parallel bool) map[string]error {
	failed := l.pass(names, parallel)
	var retry []string
	for _, n := range names {
		if _, ok := failed[n]; ok {
			retry = append(retry, n)
		}
	}
	if len(retry) == 0 {
		return failed
	}
	return l.pass(retry, false)
}

// testHookWorker, nil outside tests, runs at the start of the work for
// each module of a pass (in its goroutine when the pass is parallel).
var testHookWorker func()

func (l *Loader) pass(names []string, parallel bool) map[string]error {
	failed := map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range names {
		// The init runs the loader in PID1, where a panic would bring
		// the node down: a panic is this module's error instead, and the
		// stage that needs it fails with it (docs/boot.md).
		one := func() {
			err := safego.Call(loaderName(n), func() error {
				if testHookWorker != nil {
					testHookWorker()
				}
				return l.loadName(n, parallel)
			})
			if err != nil {
				mu.Lock()
				failed[n] = err
				mu.Unlock()
			}
		}
		if !parallel {
			one()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			one()
		}()
	}
	wg.Wait()
	return failed
}

// loaderName names the work for one module in panic reports and errors.
func loaderName(module string) string {
	return "loading module " + strings.ReplaceAll(module, "-", "_")
}

// loadName loads one module by name, dependencies first.
func (l *Loader) loadName(name string, parallel bool) error {
	name = strings.ReplaceAll(name, "-", "_")
	file, ok := l.files[name]
	if !ok {
		if l.builtin[name] {
			return nil
		}
		return fmt.Errorf("kmod: no module %q in %s/modules.dep", name, l.dir)
	}
	return l.ensure(file, parallel, nil)
}

// ensure loads file unless it is loaded, after its dependencies; if
// another caller is loading it, it waits for that load. A failure is not
// remembered: a later call tries again. stack holds the files whose
// dependencies are being loaded, to refuse a cycle.
func (l *Loader) ensure(file string, parallel bool, stack []string) error {
	for _, s := range stack {
		if s == file {
			return fmt.Errorf("kmod: circular dependency through %s", file)
		}
	}
	l.mu.Lock()
	if l.loaded[file] {
		l.mu.Unlock()
		return nil
	}
	if f, ok := l.inFlight[file]; ok {
		l.mu.Unlock()
		<-f.done
		return f.err
	}
	f := &loading{done: make(chan struct{})}
	l.inFlight[file] = f
	l.mu.Unlock()

	// A fresh array: sibling goroutines share stack. A panic is the
	// load's error, so that every caller waiting for this file gets it
	// (and none waits for ever), and the file is not marked loaded.
	f.err = safego.Call(loaderName(moduleName(file)), func() error {
		return l.depsThenFile(file, parallel, append(stack[:len(stack):len(stack)], file))
	})

	l.mu.Lock()
	delete(l.inFlight, file)
	if f.err == nil {
		l.loaded[file] = true
	}
	l.mu.Unlock()
	close(f.done)
	return f.err
}

func (l *Loader) depsThenFile(file string, parallel bool, stack []string) error {
	deps, ok := l.deps[file]
	if !ok {
		return fmt.Errorf("kmod: %s needs %s, which modules.dep does not list", stack[0], file)
	}
	if parallel && len(deps) > 1 {
		errs := make([]error, len(deps))
		var wg sync.WaitGroup
		for i, d := range deps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = safego.Call(loaderName(moduleName(d)), func() error { return l.ensure(d, parallel, stack) })
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	} else {
		for _, d := range deps {
			if err := l.ensure(d, parallel, stack); err != nil {
				return err
			}
		}
	}
	if err := l.insert(file); err != nil {
		return fmt.Errorf("kmod: %s: %w", moduleName(file), err)
	}
	return nil
}

// loadFile hands one module file to the kernel. A module that is already
// in the kernel counts as loaded.
func (l *Loader) loadFile(file string) error {
	p := filepath.Join(l.dir, file)
	var err error
	if strings.HasSuffix(file, CompressedSuffix) {
		err = initCompressed(p)
	} else {
		err = initFile(p)
	}
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

func initFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

// maxModule bounds the memory a compressed module file may claim: Debian's
// largest module is a few MiB.
const maxModule = 64 << 20

// initCompressed hands a gzip module file's image to init_module(2).
func initCompressed(p string) error {
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	img, err := decompress(data)
	if err != nil {
		return err
	}
	return unix.InitModule(img, "")
}

// decompress unpacks a gzip module file into memory of exactly the size
// its trailer gives, and refuses a stream that does not end there. (A
// bytes.Buffer of that capacity, as before, reallocated the whole image
// whenever a read left it less than 512 bytes free short of the end.)
func decompress(data []byte) ([]byte, error) {
	if len(data) < 18 {
		return nil, errors.New("not a gzip file")
	}
	size := binary.LittleEndian.Uint32(data[len(data)-4:]) // ISIZE, RFC 1952
	if size > maxModule {
		return nil, fmt.Errorf("claims %d bytes uncompressed, more than %d", size, maxModule)
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decompressing: %w", err)
	}
	img := make([]byte, size)
	if _, err := io.ReadFull(zr, img); err != nil {
		return nil, fmt.Errorf("decompressing: %w", err)
	}
	// The stream must end here; reading on also makes the reader check
	// the trailer's checksum and size.
	if n, err := zr.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		return nil, fmt.Errorf("decompressing: not %d bytes as the trailer says (%v)", size, err)
	}
	return img, nil
}
