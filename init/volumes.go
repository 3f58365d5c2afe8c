package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/bulwarkvm/bulwark/internal/proc"
	"github.com/bulwarkvm/bulwark/internal/volume"
)

// setUpVolumes gives each configured data disk a fresh 512-bit key, a
// LUKS2 header, a dm-crypt mapping and an ext4 file system, and mounts it.
// Its teardown crypto-erases the disk. Volumes are set up one after the
// other: they share the CPU that encrypts, and the report stays ordered.
func setUpVolumes(b *boot) (string, error) {
	if len(b.cfg.Volumes) == 0 {
		return "none configured", nil
	}
	opts := volume.Options{Run: proc.Run, ConfigDevice: b.cfgSource.Device}
	var lines []string
	for _, spec := range b.cfg.Volumes {
		v, err := volume.Setup(context.Background(), spec, opts)
		if err != nil {
			return "", err
		}
		b.log.Info(fmt.Sprintf("volume %s: %s %s; it is now a new volume with a new key", v.Name, v.Disk, v.Previous))
		b.log.Info("volume " + v.Summary())
		b.notes = append(b.notes, "volume "+v.Summary())
		b.onShutdown("crypto-erase volume "+v.Name, v.Erase)
		lines = append(lines, v.Name+" "+v.UUID)
	}
	return fmt.Sprintf("%d encrypted (%s)", len(lines), strings.Join(lines, ", ")), nil
}
