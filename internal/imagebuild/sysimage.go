package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bulwarkvm/bulwark/internal/deb"
	"github.com/bulwarkvm/bulwark/internal/elfdeps"
	"github.com/bulwarkvm/bulwark/internal/verity"
)

// DefaultPackages is the system image's package set when none is given:
// the database and its audit extension. This is the one place it is set;
// image/, bulwarkctl and the Packer plugin take it from here.
var DefaultPackages = []string{"postgresql-15", "postgresql-15-pgaudit"}

const (
	// SystemImageFile is the system image in the output directory: the
	// squashfs data, then the verity hash area (superblock and tree).
	SystemImageFile = "system.img"
	// CmdlineFile is the direct kernel boot's whole command line, root
	// hash included, in the output directory (for -append "$(cat ...)").
	CmdlineFile = "cmdline"
	// UsrHashParam is the kernel command-line parameter that carries the
	// system image's root hash. A node without it halts: it runs its
	// workload only from a verified system image.
	UsrHashParam = "bulwark.usrhash"
	// SystemImageSerial is the serial of the virtio disk that holds
	// system.img on a direct kernel boot.
	SystemImageSerial = "bulwark-system"
	// BackupProgram is where the system image carries the backup
	// service's program, built from BackupPackage. It is a program of
	// its own, not the init started with a role, so that the S3 client
	// it links (minio-go, whose package initialisation is not free under
	// emulation) is in neither PID1 nor the initramfs; on the system
	// image it is verified and measured with the rest of /usr.
	BackupProgram = "/usr/libexec/bulwark/backup"
	BackupPackage = "./services/backup/cmd/bulwark-backup"

	squashfsBlock = 128 << 10
	zstdLevel     = 9
)

// sysLibDirs is where the dynamic loader looks on the node: the system
// search path of Debian's glibc (ld.so --help), without /etc/ld.so.cache,
// which the node does not have.
var sysLibDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"}

// dependencyData are files the image takes from the packages it needs
// only for libraries, because the database needs them at run time: the
// C.UTF-8 locale (libc-bin), the one locale kept.
var dependencyData = []string{"/usr/lib/locale/C.utf8/"}

// dropRule says which files of a package the image leaves out: what a
// node never uses.
type dropRule struct {
	why     string
	pattern string // a path.Match pattern for the path or one of its parent directories
	except  string // a directory the pattern matches that is kept
}

var dropRules = []dropRule{
	{"documentation", "/usr/share/doc", ""},
	{"documentation", "/usr/share/doc-base", ""},
	{"documentation", "/usr/share/info", ""},
	{"documentation", "/usr/share/lintian", ""},
	{"documentation", "/usr/share/bug", ""},
	{"documentation", "/usr/share/menu", ""},
	{"man pages", "/usr/share/man", ""},
	{"man pages", "/usr/share/postgresql/*/man", ""},
	{"locales other than C.UTF-8", "/usr/share/locale", ""},
	{"locales other than C.UTF-8", "/usr/share/i18n", ""},
	{"locales other than C.UTF-8", "/usr/lib/locale/*", "/usr/lib/locale/C.utf8"},
	{"LLVM JIT", "/usr/lib/postgresql/*/lib/llvmjit*", ""},
	{"LLVM JIT", "/usr/lib/postgresql/*/lib/bitcode", ""},
}

// dropReason returns why p is left out, or "".
func dropReason(p string) string {
	for d := p; d != "/" && d != "."; d = path.Dir(d) {
		for _, r := range dropRules {
			if ok, _ := path.Match(r.pattern, d); ok && d != r.except {
				return r.why
			}
		}
	}
	return ""
}

// SystemImage is the build report's description of the system image.
type SystemImage struct {
	File string `json:"file"`
	// RootHash is the dm-verity root hash (hex): what the kernel command
	// line carries and PCR 15 is extended with.
	RootHash string `json:"root_hash"`
	// HashOffset is where the verity superblock starts in File, in
	// bytes; the data (squashfs) is everything before it.
	HashOffset int64  `json:"hash_offset"`
	DataBytes  int64  `json:"data_bytes"`
	HashBytes  int64  `json:"hash_bytes"`
	Salt       string `json:"salt"`
	// Cmdline is the kernel command-line argument that binds the image;
	// the report's cmdline (the direct kernel boot's, also out/cmdline)
	// and the UEFI disk's loader entry end with it.
	Cmdline    string `json:"cmdline"`
	Filesystem string `json:"filesystem"`
	// MountPoint is where the node mounts the image.
	MountPoint string `json:"mount_point"`
	Files      int    `json:"files"`
	// FileBytes is the size of the files in the image, uncompressed.
	FileBytes int64 `json:"file_bytes"`
	// DebianInstalledBytes is what Debian installs for the same request
	// (apt-get install --no-install-recommends on an empty system: the
	// Installed-Size of every package of the closure).
	DebianInstalledBytes int64        `json:"debian_installed_bytes"`
	Packages             []SysPackage `json:"packages"`
	// Extra are the files that come from the build rather than from a
	// package, with their digests: the backup program and
	// Options.SystemFiles.
	Extra []Artifact `json:"extra_files"`
	// Dropped counts what the image leaves out of the packages it takes
	// whole, by reason.
	Dropped map[string]DropCount `json:"dropped"`
}

// SysPackage is one package that contributed files to the image.
type SysPackage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"architecture"`
	// Role is "requested" (all its files, less the dropped ones) or
	// "libraries" (only the shared libraries and run-time data the
	// requested packages need).
	Role      string `json:"role"`
	DebSHA256 string `json:"deb_sha256"`
	DebBytes  int64  `json:"deb_bytes"`
	// InstalledBytes is Debian's Installed-Size of the package.
	InstalledBytes int64 `json:"installed_bytes"`
	Files          int   `json:"files"`
	// Bytes is what the image holds of it, uncompressed.
	Bytes int64 `json:"bytes"`
}

// DropCount counts files left out.
type DropCount struct {
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
}

// MountPoint is where the node mounts the system image: it is the node's
// /usr (the Discoverable Partitions Specification's "usr" partition).
const MountPoint = "/usr"

// sysPkg is a package of the closure while the image is built.
type sysPkg struct {
	rec       deb.Record
	path      string
	requested bool
	control   map[string][]byte
	tree      *sysTree // its files, once extracted
	used      SysPackage
	// sonames are the shared libraries its shlibs and symbols files
	// declare; basenames the names of the files its md5sums lists.
	sonames, basenames map[string]bool
	files              []string
}

func (p *sysPkg) index() {
	p.sonames, p.basenames = map[string]bool{}, map[string]bool{}
	for _, s := range deb.Sonames(p.control) {
		p.sonames[s] = true
	}
	p.files = deb.Files(p.control)
	for _, f := range p.files {
		p.basenames[path.Base(f)] = true
	}
}

// buildSystemImage builds dst (squashfs data, then the verity hash area)
// from the packages, and returns its description and the verity result.
func (o *Options) buildSystemImage(ctx context.Context, dst, backupBin string) (*SystemImage, *verity.Result, error) {
	si := &SystemImage{File: dst, MountPoint: MountPoint, Dropped: map[string]DropCount{}, Packages: []SysPackage{}}
	root := newSysTree()
	var pkgs []*sysPkg
	if len(o.Packages) > 0 {
		var err error
		if pkgs, err = o.addPackages(si, root); err != nil {
			return nil, nil, err
		}
	}
	files := map[string]string{BackupProgram: backupBin}
	for k, v := range o.SystemFiles {
		if k == BackupProgram {
			return nil, nil, fmt.Errorf("imagebuild: system image: extra file %s: the build puts the backup program there", k)
		}
		files[k] = v
	}
	if err := addSystemFiles(si, root, files); err != nil {
		return nil, nil, err
	}

	// Libraries: every ELF file's interpreter and DT_NEEDED libraries,
	// transitively, found in the tree or else in the one package of the
	// closure that declares the soname (shlibs, symbols) or ships the file
	// (md5sums), whose file and the symbolic links naming it are copied in.
	var elfs []string
	for _, name := range root.paths() {
		if isELF(root.m[name]) {
			elfs = append(elfs, name)
		}
	}
	// The packages that provide what the requested files need directly
	// are extracted first, in parallel; the libraries those need in turn
	// come one at a time below.
	if err := extractAll(providers(root, pkgs, elfs)); err != nil {
		return nil, nil, err
	}
	missing := func(name string) error { return provide(root, pkgs, name) }
	if _, err := elfdeps.ResolveIn(root, elfs, sysLibDirs, missing); err != nil {
		return nil, nil, fmt.Errorf("imagebuild: system image: %w", err)
	}
	if len(pkgs) > 0 {
		for _, prefix := range dependencyData {
			if err := provideData(root, pkgs, prefix); err != nil {
				return nil, nil, fmt.Errorf("imagebuild: system image: %w", err)
			}
		}
	}

	for _, p := range pkgs {
		if p.used.Files == 0 {
			continue
		}
		p.used.Name, p.used.Version, p.used.Arch = p.rec.Name, p.rec.Version, p.rec.Arch
		p.used.DebSHA256, p.used.DebBytes, p.used.InstalledBytes = p.rec.SHA256, p.rec.Size, p.rec.InstalledBytes
		p.used.Role = "libraries"
		if p.requested {
			p.used.Role = "requested"
		}
		si.Packages = append(si.Packages, p.used)
		si.Files += p.used.Files
		si.FileBytes += p.used.Bytes
	}
	for _, a := range si.Extra {
		si.Files++
		si.FileBytes += a.Bytes
	}

	tool, err := o.mksquashfs(ctx, root, dst)
	if err != nil {
		return nil, nil, err
	}
	si.Filesystem = fmt.Sprintf("squashfs, zstd level %d, %d KiB blocks (%s)", zstdLevel, squashfsBlock>>10, tool)
	res, err := appendVerity(dst)
	if err != nil {
		return nil, nil, err
	}
	si.RootHash = hex.EncodeToString(res.RootHash[:])
	si.HashOffset, si.DataBytes, si.HashBytes = res.HashOffset, res.HashOffset, res.HashBytes
	si.Cmdline = UsrHashParam + "=" + si.RootHash
	sb, err := readSuperblock(dst, res.HashOffset)
	if err != nil {
		return nil, nil, err
	}
	si.Salt = hex.EncodeToString(sb.Salt)
	return si, res, nil
}

// addSystemFiles puts the build's own files (destination = source) into
// the tree, in a stable order, each under /usr.
func addSystemFiles(si *SystemImage, root *sysTree, files map[string]string) error {
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, dst := range keys {
		if path.Clean(dst) != dst || !strings.HasPrefix(dst, MountPoint+"/") {
			return fmt.Errorf("imagebuild: system image: extra file %q: not a clean path under %s", dst, MountPoint)
		}
		src := files[dst]
		st, err := os.Stat(src)
		if err != nil {
			return fmt.Errorf("imagebuild: system image: extra file %s: %w", dst, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("imagebuild: system image: extra file %s: %s is not a regular file", dst, src)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("imagebuild: system image: extra file %s: %w", dst, err)
		}
		// The mode is fixed, not the build host's (go build and cp
		// follow the umask): 0755 for a program, 0644 for data, so that
		// every builder makes the same image and unprivileged processes
		// can run its programs.
		mode := fs.FileMode(0o644)
		if st.Mode().Perm()&0o111 != 0 {
			mode = 0o755
		}
		if err := root.put(dst, &sysEntry{mode: mode, data: b, pkg: "the build"}); err != nil {
			return fmt.Errorf("imagebuild: system image: %w", err)
		}
		sum := sha256.Sum256(b)
		si.Extra = append(si.Extra, Artifact{Path: dst, Bytes: int64(len(b)), SHA256: hex.EncodeToString(sum[:])})
	}
	return nil
}

// addPackages puts the requested packages' files (less what the drop
// rules name) into the tree and returns the whole closure, whose other
// packages provide libraries.
func (o *Options) addPackages(si *SystemImage, root *sysTree) ([]*sysPkg, error) {
	refs, err := deb.ClosureCached(o.DebCache, o.Packages)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: system image: %w", err)
	}
	recs, err := deb.Show(refs)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: system image: %w", err)
	}
	var list []deb.Record
	for _, r := range refs {
		list = append(list, recs[r])
	}
	paths, err := deb.Fetch(o.DebCache, list)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: system image: %w", err)
	}
	requested := map[string]bool{}
	for _, n := range o.Packages {
		name, _, _ := strings.Cut(n, "=")
		requested[name] = true
	}
	deb.SortRefs(refs)
	var pkgs []*sysPkg
	for _, r := range refs {
		p := &sysPkg{rec: recs[r], path: paths[r], requested: requested[r.Name]}
		si.DebianInstalledBytes += p.rec.InstalledBytes
		d, err := deb.Open(p.path)
		if err != nil {
			return nil, err
		}
		p.control, err = d.Control()
		d.Close()
		if err != nil {
			return nil, err
		}
		p.index()
		pkgs = append(pkgs, p)
	}

	var want []*sysPkg
	for _, p := range pkgs {
		if p.requested {
			want = append(want, p)
		}
	}
	if err := extractAll(want); err != nil {
		return nil, err
	}
	for _, p := range want {
		for _, name := range p.tree.paths() {
			if name == "/usr" {
				continue
			}
			e := p.tree.m[name]
			if err := root.put(name, e); err != nil {
				return nil, fmt.Errorf("imagebuild: system image: %w", err)
			}
			p.count(e)
		}
		for why, c := range p.tree.dropped {
			t := si.Dropped[why]
			t.Files += c.Files
			t.Bytes += c.Bytes
			si.Dropped[why] = t
		}
	}

	return pkgs, nil
}

func (p *sysPkg) count(e *sysEntry) {
	if e.mode.IsDir() {
		return
	}
	p.used.Files++
	p.used.Bytes += int64(len(e.data))
}

// extract reads the package's data.tar into its own tree, leaving out what
// the drop rules name and everything outside /usr.
func (p *sysPkg) extract() error {
	if p.tree != nil {
		return nil
	}
	d, err := deb.Open(p.path)
	if err != nil {
		return err
	}
	defer d.Close()
	t := newSysTree()
	t.dropped = map[string]DropCount{}
	name := p.rec.Name
	err = d.Data(func(h *tar.Header, r io.Reader) error {
		np, ok := nodePath(h.Name)
		why := "outside /usr"
		if ok {
			why = dropReason(np)
		}
		if np == "/" {
			return nil
		}
		if why != "" {
			if h.Typeflag != tar.TypeDir {
				c := t.dropped[why]
				c.Files++
				c.Bytes += h.Size
				t.dropped[why] = c
			}
			return nil
		}
		e := &sysEntry{mode: fs.FileMode(h.Mode).Perm(), pkg: name}
		if h.Mode&0o4000 != 0 {
			e.mode |= fs.ModeSetuid
		}
		if h.Mode&0o2000 != 0 {
			e.mode |= fs.ModeSetgid
		}
		if h.Mode&0o1000 != 0 {
			e.mode |= fs.ModeSticky
		}
		switch h.Typeflag {
		case tar.TypeDir:
			e.mode |= fs.ModeDir
		case tar.TypeReg:
			b, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			e.data = b
		case tar.TypeSymlink:
			e.mode = fs.ModeSymlink | 0o777
			e.link = canonicalTarget(h.Linkname)
		case tar.TypeLink:
			target, ok := nodePath(h.Linkname)
			if !ok {
				return fmt.Errorf("%s: hard link %s to %s outside /usr", name, h.Name, h.Linkname)
			}
			// A hard link keeps the mode of the file it names.
			if f, ok := t.m[target]; ok {
				e.mode = f.mode
			}
			e.hard, e.link = true, target
		default:
			return fmt.Errorf("%s: %s: unsupported entry type %q", name, h.Name, h.Typeflag)
		}
		if old, ok := t.m[np]; ok && old.mode.IsDir() && e.mode.IsDir() {
			old.mode = e.mode
			return nil
		}
		return t.put(np, e)
	})
	if err != nil {
		return fmt.Errorf("imagebuild: system image: %w", err)
	}
	p.tree = t
	return nil
}

// extractAll extracts packages, as many at once as there are CPUs (xz
// decompression is most of the time the system image takes).
func extractAll(ps []*sysPkg) error {
	sem := make(chan struct{}, runtime.NumCPU())
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = p.extract()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// providers returns the packages of the closure that provide the
// interpreters and libraries the files need and root lacks.
func providers(root *sysTree, pkgs []*sysPkg, files []string) []*sysPkg {
	names := map[string]bool{}
	for _, f := range files {
		e := root.m[f]
		ef, err := elf.NewFile(bytes.NewReader(e.data))
		if err != nil {
			continue
		}
		needed, _ := ef.DynString(elf.DT_NEEDED)
		for _, n := range needed {
			names[n] = true
		}
		for _, p := range ef.Progs {
			if p.Type == elf.PT_INTERP {
				b := make([]byte, p.Filesz)
				p.ReadAt(b, 0)
				names[path.Base(strings.TrimRight(string(b), "\x00"))] = true
			}
		}
	}
	var out []*sysPkg
	for _, p := range pkgs {
		if p.requested {
			continue
		}
		for n := range names {
			if p.sonames[n] || p.basenames[n] {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// provide brings a missing library (a soname) or interpreter (a path) into
// root from the package of the closure that has it.
func provide(root *sysTree, pkgs []*sysPkg, name string) error {
	var cands []*sysPkg
	base := path.Base(name)
	for _, p := range pkgs {
		if p.requested {
			continue // its files are all in root already
		}
		if p.sonames[base] || p.basenames[base] {
			cands = append(cands, p)
		}
	}
	for _, p := range cands {
		if err := p.extract(); err != nil {
			return err
		}
		var where []string
		if strings.HasPrefix(name, "/") {
			where = []string{name}
		} else {
			for _, d := range sysLibDirs {
				where = append(where, path.Join(d, name))
			}
		}
		for _, w := range where {
			if _, e, err := p.tree.resolve(w); err != nil || !e.mode.IsRegular() {
				continue
			}
			return copyChain(root, p, w)
		}
	}
	return errNoProvider
}

// copyChain copies the entry at w and every link on the way to it from
// p's tree into root.
func copyChain(root *sysTree, p *sysPkg, w string) error {
	chain, err := p.tree.chain(w)
	if err != nil {
		return err
	}
	for _, c := range chain {
		e := p.tree.m[c]
		if _, ok := root.m[c]; ok {
			continue
		}
		if err := root.put(c, e); err != nil {
			return err
		}
		p.count(e)
	}
	return nil
}

// provideData copies the files under prefix from the first package of the
// closure (by name) that ships them.
func provideData(root *sysTree, pkgs []*sysPkg, prefix string) error {
	for _, p := range pkgs {
		if p.requested || !slices.ContainsFunc(p.files, func(f string) bool { return strings.HasPrefix(f, prefix) }) {
			continue
		}
		if err := p.extract(); err != nil {
			return err
		}
		for _, name := range p.tree.paths() {
			if strings.HasPrefix(name+"/", prefix) && !p.tree.m[name].mode.IsDir() {
				if err := copyChain(root, p, name); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return nil // no package of the closure has it: the image goes without
}

// sourceDateEpoch is the time of every file in the image.
func sourceDateEpoch() int64 {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var n int64
		if _, err := fmt.Sscanf(s, "%d", &n); err == nil && n >= 0 {
			return n
		}
	}
	return 1577836800 // 2020-01-01, as the UEFI disk's FAT
}

func unixTime(s int64) time.Time { return time.Unix(s, 0).UTC() }

// mksquashfs writes the tree to dst as squashfs, from a tar stream on its
// standard input: entries sorted, owned by root, one time for all (files,
// directories, the file system itself), no extended attributes, no NFS
// export table. mksquashfs 4.4 and later writes the same bytes for the
// same input whatever its thread count (reproducible is its default).
func (o *Options) mksquashfs(ctx context.Context, t *sysTree, dst string) (string, error) {
	bin, err := exec.LookPath("mksquashfs")
	if err != nil {
		return "", fmt.Errorf("imagebuild: system image: mksquashfs not found: install squashfs-tools (make deps does)")
	}
	ver, _ := exec.Command(bin, "-version").Output()
	tool := strings.TrimSpace(strings.SplitN(string(ver), "\n", 2)[0])
	epoch := fmt.Sprint(sourceDateEpoch())
	tmp := dst + ".tmp"
	os.Remove(tmp)
	cmd := exec.CommandContext(ctx, bin, "-", tmp, "-tar", "-noappend", "-quiet", "-no-progress",
		"-comp", "zstd", "-Xcompression-level", fmt.Sprint(zstdLevel), "-b", fmt.Sprint(squashfsBlock),
		"-all-root", "-root-mode", "0755", "-no-xattrs", "-no-exports",
		"-all-time", epoch, "-mkfs-time", epoch, "-processors", fmt.Sprint(runtime.NumCPU()))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	in, err := cmd.StdinPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("imagebuild: system image: mksquashfs: %w", err)
	}
	werr := t.writeTar(in, sourceDateEpoch())
	in.Close()
	if err := cmd.Wait(); err != nil || werr != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("imagebuild: system image: mksquashfs: %v %v\n%s", err, werr, out.String())
	}
	return tool, os.Rename(tmp, dst)
}

// appendVerity pads the squashfs to a whole number of blocks (mksquashfs
// pads to 4 KiB already) and appends the hash area: the superblock at the
// data's end, the tree after it. The salt is derived from the data (the
// same data, the same salt); the superblock's UUID from the salt.
func appendVerity(p string) (*verity.Result, error) {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := (st.Size() + verity.BlockSize - 1) / verity.BlockSize * verity.BlockSize
	if err := f.Truncate(size); err != nil {
		return nil, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
		return nil, err
	}
	salt := sha256.Sum256(append([]byte("bulwark system image salt v1\x00"), h.Sum(nil)...))
	sb := verity.Superblock{Salt: salt[:]}
	id := sha256.Sum256(append([]byte("bulwark system image uuid v1\x00"), salt[:]...))
	copy(sb.UUID[:], id[:16])
	sb.UUID[6] = sb.UUID[6]&0x0f | 0x40
	sb.UUID[8] = sb.UUID[8]&0x3f | 0x80
	res, err := verity.Format(f, uint64(size/verity.BlockSize), f, size, sb)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: system image: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	return res, nil
}

func readSuperblock(p string, off int64) (*verity.Superblock, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return verity.ReadSuperblock(f, off)
}

// defaultDebCache is where fetched packages are kept between builds.
func defaultDebCache() string {
	d, err := os.UserCacheDir()
	if err != nil {
		d = os.TempDir()
	}
	return filepath.Join(d, "bulwark", "debs")
}

// FormatSystemImage renders the system image part of the report.
func (si *SystemImage) Format(w io.Writer) {
	fmt.Fprintf(w, "  %-12s %4d files  %s in %d packages, %s as squashfs (Debian installs %s)\n", "system image",
		si.Files, human(si.FileBytes), len(si.Packages), human(si.DataBytes), human(si.DebianInstalledBytes))
	fmt.Fprintf(w, "  %-12s            root hash %s, hash area %s at offset %d\n", "", si.RootHash, human(si.HashBytes), si.HashOffset)
}
