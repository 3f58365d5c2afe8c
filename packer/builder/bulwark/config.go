//go:generate go tool packer-sdc mapstructure-to-hcl2 -type Config
//go:generate go tool packer-sdc struct-markdown

// Package bulwark is the Packer builder of bulwark's node image.
package bulwark

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/common"
	"github.com/hashicorp/packer-plugin-sdk/packer"
	"github.com/hashicorp/packer-plugin-sdk/template/config"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"

	"github.com/bulwarkvm/bulwark/internal/deb"
	"github.com/bulwarkvm/bulwark/internal/imagebuild"
	"github.com/bulwarkvm/bulwark/internal/kmod/resolve"
)

// Config is the bulwark source block.
type Config struct {
	common.PackerConfig `mapstructure:",squash"`

	// The directory the image is written to: vmlinuz, initramfs.img,
	// system.img, bulwark.img (and bulwark.qcow2), build-report.json. Default
	// `output-<build name>`. It must not exist, unless Packer runs with
	// -force.
	OutputDir string `mapstructure:"output_directory"`
	// The kernel version, as under /lib/modules: a Debian linux-image
	// package's kernel. Default: the one linux-image-amd64 depends on.
	KernelVersion string `mapstructure:"kernel_version"`
	// A kernel image to use instead of /boot/vmlinuz-<kernel_version>. Its
	// modules still come from /lib/modules/<kernel_version>.
	KernelPath string `mapstructure:"kernel_path"`
	// The file system holding boot/ and lib/modules. Default `/`.
	Root string `mapstructure:"root"`
	// Kernel modules to load after bulwark's own list, with their
	// dependencies.
	ExtraModules []string `mapstructure:"extra_modules"`
	// ELF programs (absolute host paths) to add with their shared
	// libraries.
	ExtraTools []string `mapstructure:"extra_tools"`
	// Extra files: destination in the image (absolute) to source path.
	ExtraFiles map[string]string `mapstructure:"extra_files"`
	// Arguments appended to the kernel command line.
	CmdlineExtra string `mapstructure:"cmdline_extra"`
	// The UEFI disk's size in MiB. Default 128; at least 64.
	DiskSizeMiB int `mapstructure:"disk_size_mib"`
	// Output formats: `raw` (always written) and `qcow2`. Default `["raw"]`.
	Formats []string `mapstructure:"formats"`
	// The bulwark source tree the init is built from (go build, as by
	// make image). Default: found from the working directory.
	SourceDir string `mapstructure:"source_dir"`
	// Debian packages (`name` or `name=version`, from the build host's apt
	// sources) the verified system image is made of: their files, less
	// documentation, man pages, locales other than C.UTF-8 and the LLVM
	// JIT, and the shared libraries they need. Default
	// `["postgresql-15", "postgresql-15-pgaudit"]`.
	Packages []string `mapstructure:"packages"`
	// A system image without Debian packages: only bulwark's own files
	// (the backup service's program). Every node boots with a system
	// image; there is no image without one. `extra_files` go into the
	// initramfs, not the system image.
	NoPackages bool `mapstructure:"no_packages"`
	// The directory keeping the fetched .deb files. Default
	// `~/.cache/bulwark/debs`.
	DebCache string `mapstructure:"deb_cache"`

	ctx  interpolate.Context
	opts imagebuild.Options
}

var moduleName = regexp.MustCompile(`^[a-z0-9_-]{1,56}$`)

// Prepare decodes and checks the configuration; each error names its
// field.
func (c *Config) Prepare(raws ...interface{}) ([]string, error) {
	err := config.Decode(c, &config.DecodeOpts{
		PluginType:         BuilderID,
		Interpolate:        true,
		InterpolateContext: &c.ctx,
	}, raws...)
	if err != nil {
		return nil, err
	}
	var errs *packer.MultiError
	add := func(field, format string, a ...any) {
		errs = packer.MultiErrorAppend(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if c.OutputDir == "" {
		c.OutputDir = "output-" + c.PackerBuildName
	}
	if !c.PackerForce {
		if _, err := os.Stat(c.OutputDir); err == nil {
			add("output_directory", "%s exists; remove it or run packer build -force", c.OutputDir)
		}
	}
	if c.Root == "" {
		c.Root = "/"
	}
	if st, err := os.Stat(filepath.Join(c.Root, "lib/modules")); err != nil || !st.IsDir() {
		add("root", "%s has no lib/modules directory", c.Root)
	}
	if c.KernelPath != "" {
		if st, err := os.Stat(c.KernelPath); err != nil || !st.Mode().IsRegular() {
			add("kernel_path", "%s is not a file", c.KernelPath)
		}
	}
	for i, m := range c.ExtraModules {
		if !moduleName.MatchString(m) {
			add(fmt.Sprintf("extra_modules[%d]", i), "%q is not a kernel module name", m)
		}
	}
	for i, t := range c.ExtraTools {
		if !filepath.IsAbs(t) {
			add(fmt.Sprintf("extra_tools[%d]", i), "%q is not an absolute path", t)
		} else if st, err := os.Stat(t); err != nil || !st.Mode().IsRegular() {
			add(fmt.Sprintf("extra_tools[%d]", i), "%s is not a file", t)
		}
	}
	for dst, src := range c.ExtraFiles {
		if !path.IsAbs(dst) || path.Clean(dst) != dst || dst == "/" || dst == "/init" {
			add("extra_files", "destination %q is not a clean absolute path (nor /init)", dst)
		}
		if st, err := os.Stat(src); err != nil || !st.Mode().IsRegular() {
			add("extra_files", "source %s (for %s) is not a file", src, dst)
		}
	}
	if strings.ContainsAny(c.CmdlineExtra, "\n\r\x00") {
		add("cmdline_extra", "may not contain line breaks or NUL")
	}
	if c.DiskSizeMiB == 0 {
		c.DiskSizeMiB = int(imagebuild.DefaultDiskSize >> 20)
	}
	if c.DiskSizeMiB < 64 || c.DiskSizeMiB > 1<<20 {
		add("disk_size_mib", "%d is out of range (64 to 1048576)", c.DiskSizeMiB)
	}
	if len(c.Formats) == 0 {
		c.Formats = []string{"raw"}
	}
	for i, f := range c.Formats {
		if f != "raw" && f != "qcow2" {
			add(fmt.Sprintf("formats[%d]", i), "%q is not raw or qcow2", f)
		}
	}
	if c.NoPackages && len(c.Packages) > 0 {
		add("packages", "given with no_packages = true")
	}
	for i, p := range c.Packages {
		if err := deb.CheckName(p); err != nil {
			add(fmt.Sprintf("packages[%d]", i), "%v", err)
		}
	}
	if c.SourceDir != "" {
		if _, err := os.Stat(filepath.Join(c.SourceDir, "init")); err != nil {
			add("source_dir", "%s does not hold bulwark's init/ directory", c.SourceDir)
		}
	}
	if errs != nil {
		return nil, errs
	}
	c.opts = imagebuild.Options{
		OutDir: c.OutputDir, Root: c.Root, KernelVersion: c.KernelVersion, KernelPath: c.KernelPath,
		ExtraModules: c.ExtraModules, ExtraTools: c.ExtraTools, ExtraFiles: c.ExtraFiles,
		CmdlineExtra: c.CmdlineExtra, DiskSize: int64(c.DiskSizeMiB) << 20, Formats: c.Formats,
		SourceDir: c.SourceDir, Packages: c.Packages, NoPackages: c.NoPackages, DebCache: c.DebCache,
	}
	if err := c.opts.Prepare(); err != nil {
		field := "kernel_version"
		if strings.Contains(err.Error(), "source") || strings.Contains(err.Error(), "go.mod") {
			field = "source_dir"
		}
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	// Unknown modules are found now, not halfway through a build.
	if len(c.ExtraModules) > 0 {
		if _, err := resolve.Files(c.Root, c.opts.KernelVersion, c.ExtraModules); err != nil {
			return nil, fmt.Errorf("extra_modules: %w", err)
		}
	}
	return nil, nil
}
