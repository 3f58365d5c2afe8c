// Package imagebuild builds the node image: the kernel, an initramfs holding
// the init, the kernel modules and the few ELF tools the init runs, and a
// UEFI-bootable disk. The image/ command, bulwarkctl and the Packer plugin
// all call Build; there is no second build path.
package imagebuild

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bulwarkvm/bulwark/internal/deb"
	"github.com/bulwarkvm/bulwark/internal/efidisk"
	"github.com/bulwarkvm/bulwark/internal/elfdeps"
	"github.com/bulwarkvm/bulwark/internal/initramfs"
	"github.com/bulwarkvm/bulwark/internal/kmod"
	"github.com/bulwarkvm/bulwark/internal/kmod/resolve"
)

// ModulePath is the Go module the init is built from.
const ModulePath = "github.com/bulwarkvm/bulwark"

// DefaultCmdline is the kernel command line. console=ttyS0 is the serial
// console the tests read; panic=-1 reboots at once on a kernel panic (QEMU
// run with -no-reboot then exits instead of hanging); quiet keeps the serial
// console, slow under emulation, for the init's own report.
const DefaultCmdline = "console=ttyS0,115200 panic=-1 quiet"

// DefaultTools are the ELF programs the init runs.
var DefaultTools = []string{"/usr/sbin/mke2fs"}

// moduleRoot is where the initramfs carries kernel modules.
const moduleRoot = "/usr/lib/modules"

// DefaultDiskSize is the size of the UEFI disk.
const DefaultDiskSize = 128 << 20

// Options configure a build. The zero value builds the default image into
// ./out from the host's Debian kernel.
type Options struct {
	OutDir        string   // default "out"
	Root          string   // file system holding boot/ and lib/modules; default "/"
	KernelVersion string   // default: discovered from linux-image-amd64
	KernelPath    string   // default: <Root>/boot/vmlinuz-<version>
	ExtraModules  []string // loaded after the built-in list
	ExtraTools    []string // more ELF programs, with their libraries
	ExtraFiles    map[string]string
	CmdlineExtra  string   // appended to DefaultCmdline
	DiskSize      int64    // default DefaultDiskSize
	Formats       []string // "raw" (always written) and "qcow2"
	InitBinary    string   // a prebuilt init; default: go build ./init
	SourceDir     string   // the bulwark module; default: found from the working directory
	InitPackage   string   // default "./init"; tests build other programs as /init
	// BackupBinary is a prebuilt backup service program; default: go
	// build BackupPackage. It goes into the system image at
	// BackupProgram, not into the initramfs.
	BackupBinary string
	SkipDisk     bool // build no UEFI disk: vmlinuz, the initramfs and system.img only
	// Packages are the Debian packages (name, or name=version) the system
	// image is made of; nil means DefaultPackages.
	Packages []string
	// NoPackages makes a system image without Debian packages: only the
	// files of SystemFiles. Every node needs a system image (the init
	// halts without a root hash on its command line); this is for
	// workloads that are single static programs, and for tests.
	NoPackages bool
	// SystemFiles are more files for the system image, as
	// destination (under /usr) = source on the build host.
	SystemFiles map[string]string
	// DebCache is where fetched .debs are kept; default
	// <user cache directory>/bulwark/debs.
	DebCache string
}

// Part is one line of the build report.
type Part struct {
	Name  string `json:"name"`
	Files int    `json:"files"`
	Bytes int64  `json:"bytes"`
	// Note says more, for example how many files are compressed.
	Note string `json:"note,omitempty"`
}

// Artifact is one output file with its digest.
type Artifact struct {
	Path   string `json:"path"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// Report describes a finished build.
type Report struct {
	KernelVersion       string `json:"kernel_version"`
	Cmdline             string `json:"cmdline"`
	Parts               []Part `json:"parts"`
	InitramfsRaw        int64  `json:"initramfs_uncompressed_bytes"`
	InitramfsCompressed int64  `json:"initramfs_compressed_bytes"`
	// SystemImage is the verified system image; nil without one.
	SystemImage *SystemImage `json:"system_image,omitempty"`
	Artifacts   []Artifact   `json:"artifacts"`
}

// Build builds the image and returns its report, which is also written to
// <OutDir>/build-report.json.
func Build(ctx context.Context, o Options) (*Report, error) {
	if err := o.Prepare(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	rep := &Report{KernelVersion: o.KernelVersion, Cmdline: o.cmdline()}

	initBin := o.InitBinary
	if initBin == "" {
		initBin = filepath.Join(o.OutDir, "init")
		if err := buildProgram(ctx, o.SourceDir, o.InitPackage, initBin); err != nil {
			return nil, err
		}
	}
	backupBin := o.BackupBinary
	if backupBin == "" {
		backupBin = filepath.Join(o.OutDir, "backup")
		if err := buildProgram(ctx, o.SourceDir, BackupPackage, backupBin); err != nil {
			return nil, err
		}
	}
	arch, raw, err := o.assemble(initBin, rep)
	if err != nil {
		return nil, err
	}
	rep.InitramfsRaw = raw

	kernel := filepath.Join(o.OutDir, "vmlinuz")
	if err := copyFile(o.KernelPath, kernel); err != nil {
		return nil, err
	}
	initrd := filepath.Join(o.OutDir, "initramfs.img")
	n, err := arch.WriteFile(initrd)
	if err != nil {
		return nil, err
	}
	rep.InitramfsCompressed = n
	outputs := []string{kernel, initrd}

	// Every node boots with its system image: the root hash is on the
	// command line of both boots (the UEFI disk's loader entry and the
	// direct kernel boot's, rep.Cmdline and out/cmdline).
	sysPath := filepath.Join(o.OutDir, SystemImageFile)
	si, res, err := o.buildSystemImage(ctx, sysPath, backupBin)
	if err != nil {
		return nil, err
	}
	rep.SystemImage = si
	rep.Cmdline += " " + si.Cmdline
	outputs = append(outputs, sysPath)
	if err := os.WriteFile(filepath.Join(o.OutDir, CmdlineFile), []byte(rep.Cmdline+"\n"), 0o644); err != nil {
		return nil, err
	}
	if !o.SkipDisk {
		spec := efidisk.Spec{Kernel: kernel, Initramfs: initrd, Cmdline: rep.Cmdline, Size: o.DiskSize}
		spec.Usr = &efidisk.Usr{Image: sysPath, DataBytes: si.DataBytes, HashOffset: si.HashOffset, HashBytes: si.HashBytes, RootHash: res.RootHash[:]}
		disk := filepath.Join(o.OutDir, "bulwark.img")
		if err := efidisk.Build(disk, spec); err != nil {
			return nil, err
		}
		outputs = append(outputs, disk)
		if slices.Contains(o.Formats, "qcow2") {
			q := filepath.Join(o.OutDir, "bulwark.qcow2")
			if err := efidisk.ConvertQcow2(disk, q); err != nil {
				return nil, err
			}
			outputs = append(outputs, q)
		}
	}
	for _, p := range outputs {
		a, err := describe(p)
		if err != nil {
			return nil, err
		}
		rep.Artifacts = append(rep.Artifacts, a)
	}
	js, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(filepath.Join(o.OutDir, "build-report.json"), append(js, '\n'), 0o644); err != nil {
		return nil, err
	}
	return rep, nil
}

// Prepare fills in the defaults (the kernel version discovered from
// linux-image-amd64, the source directory found from the working
// directory) and checks the options; Build calls it, and the Packer
// plugin calls it in its own Prepare so that errors come before a build.
func (o *Options) Prepare() error {
	if o.OutDir == "" {
		o.OutDir = "out"
	}
	if o.Root == "" {
		o.Root = "/"
	}
	if o.KernelVersion == "" {
		v, err := DiscoverKernel(o.Root)
		if err != nil {
			return err
		}
		o.KernelVersion = v
	} else if err := checkKernel(o.Root, o.KernelVersion); err != nil {
		return err
	}
	if o.KernelPath == "" {
		o.KernelPath = KernelPath(o.Root, o.KernelVersion)
	}
	if o.DiskSize == 0 {
		o.DiskSize = DefaultDiskSize
	}
	for _, f := range o.Formats {
		if f != "raw" && f != "qcow2" {
			return fmt.Errorf("imagebuild: output format %q: must be raw or qcow2", f)
		}
	}
	if strings.ContainsAny(o.CmdlineExtra, "\n\r") {
		return fmt.Errorf("imagebuild: the kernel command line may not contain line breaks")
	}
	if o.InitPackage == "" {
		o.InitPackage = "./init"
	}
	if strings.Contains(" "+o.CmdlineExtra, " "+UsrHashParam+"=") {
		return fmt.Errorf("imagebuild: the kernel command line may not name %s=: the build adds the system image's own", UsrHashParam)
	}
	if o.NoPackages && len(o.Packages) > 0 {
		return fmt.Errorf("imagebuild: packages given with NoPackages")
	}
	if o.Packages == nil && !o.NoPackages {
		o.Packages = slices.Clone(DefaultPackages)
	}
	if o.NoPackages {
		o.Packages = []string{}
	} else {
		if len(o.Packages) == 0 {
			return fmt.Errorf("imagebuild: no packages for the system image (set NoPackages for a system image of SystemFiles only)")
		}
		for _, p := range o.Packages {
			if err := deb.CheckName(p); err != nil {
				return fmt.Errorf("imagebuild: packages: %w", err)
			}
		}
	}
	if o.DebCache == "" {
		o.DebCache = defaultDebCache()
	}
	if (o.InitBinary == "" || o.BackupBinary == "") && o.SourceDir == "" {
		d, err := FindSourceDir()
		if err != nil {
			return err
		}
		o.SourceDir = d
	}
	return nil
}

func (o *Options) cmdline() string {
	return strings.TrimSpace(DefaultCmdline + " " + o.CmdlineExtra)
}

// assemble collects everything that goes into the initramfs.
func (o *Options) assemble(initBin string, rep *Report) (*initramfs.Archive, int64, error) {
	a := initramfs.New()
	b, err := os.ReadFile(initBin)
	if err != nil {
		return nil, 0, err
	}
	if err := a.AddFile("/init", b, 0o755); err != nil {
		return nil, 0, err
	}
	rep.Parts = append(rep.Parts, Part{Name: "init", Files: 1, Bytes: int64(len(b))})

	// The kernel opens /dev/console for PID1 before the init can mount
	// devtmpfs; the mount points must exist in the archive.
	if err := a.AddCharDev("/dev/console", 0o600, 5, 1); err != nil {
		return nil, 0, err
	}
	for _, d := range []string{"/proc", "/sys", "/run", "/tmp", "/mnt"} {
		if err := a.AddDir(d, 0o755); err != nil {
			return nil, 0, err
		}
	}

	// Kernel modules.
	mods := slices.Clone(kmod.Modules)
	for _, m := range o.ExtraModules {
		mods = append(mods, kmod.Module{Name: m})
	}
	files, err := resolve.Files(o.Root, o.KernelVersion, kmod.Names(mods))
	if err != nil {
		return nil, 0, err
	}
	compressed, err := resolve.BackgroundOnly(o.Root, o.KernelVersion, mods, files)
	if err != nil {
		return nil, 0, err
	}
	modDir := resolve.ModuleDir(o.Root, o.KernelVersion)
	// Modules go under /usr/lib/modules: with Debian's merged /usr, /lib is
	// a symlink to usr/lib in the archive, so the init finds them under
	// /lib/modules.
	var modBytes int64
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(modDir, f))
		if err != nil {
			return nil, 0, err
		}
		if slices.Contains(compressed, f) {
			if b, err = compressModule(b); err != nil {
				return nil, 0, fmt.Errorf("compressing %s: %w", f, err)
			}
			f += kmod.CompressedSuffix
		}
		modBytes += int64(len(b))
		if err := a.AddFile(filepath.Join(moduleRoot, o.KernelVersion, f), b, 0o644); err != nil {
			return nil, 0, err
		}
	}
	dep, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, 0, err
	}
	dep, err = resolve.FilterDep(dep, files, compressed)
	if err != nil {
		return nil, 0, err
	}
	builtin, err := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return nil, 0, err
	}
	for name, content := range map[string][]byte{"modules.dep": dep, "modules.builtin": builtin} {
		if err := a.AddFile(filepath.Join(moduleRoot, o.KernelVersion, name), content, 0o644); err != nil {
			return nil, 0, err
		}
	}
	if err := a.AddFile("/etc/bulwark/modules.list", kmod.FormatList(mods), 0o644); err != nil {
		return nil, 0, err
	}
	rep.Parts = append(rep.Parts, Part{Name: "modules", Files: len(files), Bytes: modBytes,
		Note: fmt.Sprintf("%d background-only files gzip-compressed", len(compressed))})

	// ELF tools and their libraries, under their host paths.
	tools := append(slices.Clone(DefaultTools), o.ExtraTools...)
	libs, err := elfdeps.Resolve(tools, elfdeps.DefaultLibDirs)
	if err != nil {
		return nil, 0, err
	}
	before := a.Size("")
	for _, p := range append(tools, libs...) {
		if err := a.AddHostPath(p); err != nil {
			return nil, 0, err
		}
	}
	if _, err := os.Stat("/etc/mke2fs.conf"); err == nil {
		if err := a.AddHostPath("/etc/mke2fs.conf"); err != nil {
			return nil, 0, err
		}
	}
	rep.Parts = append(rep.Parts, Part{Name: "tools", Files: len(tools) + len(libs), Bytes: a.Size("") - before})
	// The system image is mounted on /usr, and its programs name their
	// loader and libraries by paths such as /lib64/ld-linux-x86-64.so.2:
	// the archive has the links of a merged /usr (Debian's since
	// bookworm) whether or not a tool put them there.
	for _, d := range mergedDirs {
		if d == "lib32" || d == "libx32" {
			continue
		}
		if err := a.AddSymlink("/"+d, "usr/"+d); err != nil {
			return nil, 0, fmt.Errorf("imagebuild: the system image needs a merged /usr (/%s a link to usr/%s), and this host's is not: %w", d, d, err)
		}
	}

	// Extra files, in a stable order.
	before = a.Size("")
	keys := make([]string, 0, len(o.ExtraFiles))
	for k := range o.ExtraFiles {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, dst := range keys {
		src := o.ExtraFiles[dst]
		st, err := os.Stat(src)
		if err != nil {
			return nil, 0, fmt.Errorf("imagebuild: extra file %s: %w", dst, err)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, 0, err
		}
		if err := a.AddFile(dst, b, st.Mode().Perm()); err != nil {
			return nil, 0, err
		}
	}
	if len(keys) > 0 {
		rep.Parts = append(rep.Parts, Part{Name: "extra files", Files: len(keys), Bytes: a.Size("") - before})
	}
	return a, a.Size(""), nil
}

// buildProgram compiles the init or a service program as a static,
// reproducible binary: no cgo, no build paths, no build ID, no VCS stamp.
func buildProgram(ctx context.Context, srcDir, pkg, dst string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", dst, pkg)
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=-mod=readonly")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("imagebuild: building %s: %v\n%s", pkg, err, out.String())
	}
	return nil
}

// FindSourceDir walks up from the working directory to the bulwark module.
func FindSourceDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module "+ModulePath+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("imagebuild: not inside the %s source tree; set the source directory", ModulePath)
		}
		dir = parent
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

func describe(p string) (Artifact, error) {
	f, err := os.Open(p)
	if err != nil {
		return Artifact{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Artifact{}, err
	}
	return Artifact{Path: p, Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// Format renders the report for a terminal.
func (r *Report) Format(w io.Writer) {
	fmt.Fprintf(w, "bulwark image (kernel %s)\n", r.KernelVersion)
	for _, p := range r.Parts {
		fmt.Fprintf(w, "  %-12s %4d files  %s", p.Name, p.Files, human(p.Bytes))
		if p.Note != "" {
			fmt.Fprintf(w, "  (%s)", p.Note)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  %-12s            %s uncompressed, %s compressed (goal ≤ 10.0 MiB)\n", "initramfs", human(r.InitramfsRaw), human(r.InitramfsCompressed))
	if r.SystemImage != nil {
		r.SystemImage.Format(w)
	}
	for _, a := range r.Artifacts {
		fmt.Fprintf(w, "  %-40s %10s  sha256:%s\n", a.Path, human(a.Bytes), a.SHA256[:16])
	}
}

func human(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// compressModule compresses a module file with gzip at its best ratio; the
// header carries no name and no time, so the output depends on the input
// alone. gzip rather than zstd: the init already links the standard
// library's decompressor (net/http does), and a zstd one would add 0.2 MiB
// and a package initialiser to every boot.
func compressModule(b []byte) ([]byte, error) {
	var out bytes.Buffer
	zw, err := gzip.NewWriterLevel(&out, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
