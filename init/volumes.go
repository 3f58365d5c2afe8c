package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

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
	waited, err := b.awaitModules()
	if err != nil {
		return "", err
	}
	opts := volume.Options{Run: proc.Run, ConfigDevice: b.cfgSource.Device}
	testVolumeOptions(&opts)
	var lines []string
	for _, spec := range b.cfg.Volumes {
		v, err := volume.Setup(context.Background(), spec, opts)
		if err != nil {
			return "", err
		}
		b.log.Info(fmt.Sprintf("volume %s: %s %s; it is now a new volume with a new key", v.Name, v.Disk, v.Previous))
		b.log.Info("volume " + v.Summary())
		b.notes = append(b.notes, "volume "+v.Summary())
		b.volumes = append(b.volumes, v)
		// Essential: it runs, with its time kept back, however long the
		// steps before it took.
		b.onShutdownWithin("crypto-erase volume "+v.Name, 10*time.Second, true, v.Erase)
		lines = append(lines, v.Name+" "+v.UUID)
	}
	// The audit log goes to the first volume, root-only: the workload,
	// which owns the volume, cannot read or change it.
	dir := filepath.Join(b.cfg.Volumes[0].Mount, ".bulwark")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("volumes: audit directory: %w", err)
	}
	b.auditFile = filepath.Join(dir, "audit.log")
	if err := b.audit.Attach(b.auditFile); err != nil {
		return "", err
	}
	// After the audit log closes and before the volumes are erased (so
	// after the workload, the backups and any final round): whatever is
	// left of the workload's processes (a child it detached, say) could
	// keep a volume busy, and with it the key in the kernel.
	b.onShutdownWithin("kill remaining processes", 2*time.Second, true, func(context.Context) error {
		b.killOthers()
		return nil
	})
	b.onShutdownWithin("close audit log", 2*time.Second, false, func(context.Context) error { return b.audit.Close() })
	return fmt.Sprintf("%d encrypted (%s); audit log on %s%s", len(lines), strings.Join(lines, ", "), b.cfg.Volumes[0].Name, waitedNote(waited)), nil
}
