// Command image builds the bulwark node image into out/: vmlinuz, the
// initramfs, the verified system image system.img (from the Debian
// packages of -packages; docs/image.md), the UEFI disk bulwark.img (and
// bulwark.qcow2 with -qcow2), and build-report.json. `bulwarkctl image
// build` is the same command.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/bulwarkvm/bulwark/internal/imagebuild"
)

func main() {
	if err := imagebuild.Main(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}
