package imagebuild

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Main parses command-line flags and builds; image/ and bulwarkctl share it.
func Main(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("image build", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var o Options
	var modules, tools, files, packages string
	var qcow2, asJSON bool
	var diskMiB int64
	fs.StringVar(&o.OutDir, "out", "out", "output directory")
	fs.StringVar(&o.KernelVersion, "kernel-version", "", "kernel version under /lib/modules (default: the one linux-image-amd64 installs)")
	fs.StringVar(&o.KernelPath, "kernel", "", "kernel image (default: /boot/vmlinuz-<version>)")
	fs.StringVar(&modules, "modules", "", "comma-separated extra kernel modules")
	fs.StringVar(&tools, "tools", "", "comma-separated extra ELF programs (absolute host paths)")
	fs.StringVar(&files, "files", "", "comma-separated extra files as DEST=SRC")
	fs.StringVar(&o.CmdlineExtra, "cmdline", "", "extra kernel command line arguments")
	fs.StringVar(&packages, "packages", strings.Join(DefaultPackages, ","), "comma-separated Debian packages (name or name=version) for the system image; none for a system image of bulwark's own files only")
	fs.StringVar(&o.DebCache, "deb-cache", "", "directory keeping the fetched .deb files (default: ~/.cache/bulwark/debs)")
	fs.Int64Var(&diskMiB, "disk-size", DefaultDiskSize>>20, "UEFI disk size in MiB")
	fs.BoolVar(&qcow2, "qcow2", false, "also write bulwark.qcow2")
	fs.BoolVar(&o.SkipDisk, "no-disk", false, "build no UEFI disk (vmlinuz, the initramfs and system.img only)")
	fs.BoolVar(&asJSON, "json", false, "print the build report as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if packages == "none" {
		o.NoPackages = true
	} else {
		o.Packages = splitList(packages)
		if len(o.Packages) == 0 {
			return fmt.Errorf("-packages: give packages, or none for a system image without Debian packages")
		}
	}
	o.ExtraModules = splitList(modules)
	o.ExtraTools = splitList(tools)
	if files != "" {
		o.ExtraFiles = map[string]string{}
		for _, f := range splitList(files) {
			dst, src, ok := strings.Cut(f, "=")
			if !ok || dst == "" || src == "" {
				return fmt.Errorf("-files: %q is not DEST=SRC", f)
			}
			o.ExtraFiles[dst] = src
		}
	}
	o.DiskSize = diskMiB << 20
	o.Formats = []string{"raw"}
	if qcow2 {
		o.Formats = append(o.Formats, "qcow2")
	}
	rep, err := Build(ctx, o)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	rep.Format(stdout)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
