package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwarkvm/bulwark/internal/imagebuild"
)

// imageCmd is `go run ./image` as a bulwarkctl command: the same flags and
// the same Build, with progress on standard error.
func imageCmd() *cobra.Command {
	var o imagebuild.Options
	var modules, tools, files string
	var qcow2, asJSON, quiet bool
	var diskMiB int64
	build := &cobra.Command{
		Use:   "build",
		Short: "Build the node image (kernel, initramfs, UEFI disk) into --out",
		Long: `Builds the node image, as make image and go run ./image do (the same code,
internal/imagebuild): vmlinuz (Debian's linux-image-amd64), initramfs.img
(the init, kernel modules and the few ELF tools it runs), the UEFI disk
bulwark.img, bulwark.qcow2 with --qcow2, and build-report.json. Builds are
reproducible. Run it in the bulwark source tree: it builds ./init.`,
		Example: `  bulwarkctl image build --out out --qcow2
  bulwarkctl image build --no-disk --modules dm-verity --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.ExtraModules = splitList(modules)
			o.ExtraTools = splitList(tools)
			if files != "" {
				o.ExtraFiles = map[string]string{}
				for _, f := range splitList(files) {
					dst, src, ok := strings.Cut(f, "=")
					if !ok || dst == "" || src == "" {
						return usagef("image build: --files: %q is not DEST=SRC", f)
					}
					o.ExtraFiles[dst] = src
				}
			}
			o.DiskSize = diskMiB << 20
			o.Formats = []string{"raw"}
			if qcow2 {
				o.Formats = append(o.Formats, "qcow2")
			}
			p := newProgress(cmd.ErrOrStderr(), quiet, "image build", -1)
			stop := watchBuild(p, o.OutDir)
			rep, err := imagebuild.Build(cmd.Context(), o)
			stop()
			p.finish(err == nil)
			if err != nil {
				return err
			}
			stdout := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			rep.Format(stdout)
			return nil
		},
	}
	f := build.Flags()
	f.StringVar(&o.OutDir, "out", "out", "output directory `DIR`")
	f.StringVar(&o.KernelVersion, "kernel-version", "", "kernel version under /lib/modules (default: the one linux-image-amd64 installs)")
	f.StringVar(&o.KernelPath, "kernel", "", "kernel image `FILE` (default: /boot/vmlinuz-<version>)")
	f.StringVar(&modules, "modules", "", "extra kernel modules, comma-separated")
	f.StringVar(&tools, "tools", "", "extra ELF programs (absolute host paths), comma-separated")
	f.StringVar(&files, "files", "", "extra files as DEST=SRC, comma-separated")
	f.StringVar(&o.CmdlineExtra, "cmdline", "", "extra kernel command line arguments")
	f.Int64Var(&diskMiB, "disk-size", imagebuild.DefaultDiskSize>>20, "UEFI disk size in MiB")
	f.BoolVar(&qcow2, "qcow2", false, "also write bulwark.qcow2")
	f.BoolVar(&o.SkipDisk, "no-disk", false, "build no UEFI disk (vmlinuz, the initramfs and system.img only)")
	f.BoolVar(&asJSON, "json", false, "print the build report as JSON")
	f.BoolVar(&quiet, "quiet", false, "no progress on standard error")
	return group("image", "The node image", build)
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

// buildSteps are the files Build writes into the output directory, in
// order, and what it does after writing each: the only outside view of
// its progress, since Build takes no progress callback.
var buildSteps = []struct{ file, next string }{
	{"", "building the init"},
	{"init", "assembling the initramfs"},
	{"initramfs.img", "writing the UEFI disk"},
	{"bulwark.img", "converting to qcow2 / writing the report"},
	{"build-report.json", "done"},
}

// watchBuild describes the build's current step from the files it has
// written since it started, until stop is called.
func watchBuild(p *progress, dir string) (stop func()) {
	start := time.Now().Add(-time.Second) // file times are coarse on some file systems
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			step := buildSteps[0].next
			for _, s := range buildSteps[1:] {
				if st, err := os.Stat(filepath.Join(dir, s.file)); err == nil && st.ModTime().After(start) {
					step = s.next
				}
			}
			p.describe(step)
			select {
			case <-quit:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(quit); <-done }
}
