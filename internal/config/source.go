package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/siderolabs/go-blockdevice/v2/blkid"
	"golang.org/x/sys/unix"
)

// Where the node looks for its config.
const (
	FwCfgName   = "opt/bulwark/config"
	VolumeLabel = "BULWARKCFG"
	VolumeFile  = "config.json"
)

// Source says where a config document came from.
type Source struct {
	Kind   string // "fw_cfg" or "volume"
	Device string // the config volume's block device, for "volume"
}

func (s Source) String() string {
	if s.Kind == "volume" {
		return fmt.Sprintf("volume %s (%s)", VolumeLabel, s.Device)
	}
	return "fw_cfg " + FwCfgName
}

// Locate reads the config document from QEMU's fw_cfg or from a volume
// labelled BULWARKCFG (vfat or iso9660, file config.json), waiting up to
// wait for the devices to appear. Both present is an error: the node will
// not guess which one its operator meant. mountDir is an empty directory for
// mounting the volume read-only; beforeMount, when set, runs first (the
// init loads the vfat and iso9660 modules there, which a node configured
// through fw_cfg never needs).
func Locate(wait time.Duration, sysfs, devDir, mountDir string, beforeMount func() error) ([]byte, Source, error) {
	deadline := time.Now().Add(wait)
	for {
		doc, fwErr := readFwCfg(sysfs)
		dev, volErr := findVolume(sysfs, devDir)
		switch {
		case fwErr == nil && volErr == nil:
			return nil, Source{}, fmt.Errorf("config: found both fw_cfg %s and a volume labelled %s (%s); remove one", FwCfgName, VolumeLabel, dev)
		case fwErr == nil:
			return doc, Source{Kind: "fw_cfg"}, nil
		case volErr == nil:
			if beforeMount != nil {
				if err := beforeMount(); err != nil {
					return nil, Source{}, fmt.Errorf("config: volume %s: %w", dev, err)
				}
			}
			doc, err := readVolume(dev, mountDir)
			return doc, Source{Kind: "volume", Device: dev}, err
		case !errors.Is(fwErr, os.ErrNotExist):
			return nil, Source{}, fwErr
		case !errors.Is(volErr, os.ErrNotExist):
			return nil, Source{}, volErr
		}
		if time.Now().After(deadline) {
			return nil, Source{}, fmt.Errorf("config: none found: no fw_cfg entry %s and no volume labelled %s", FwCfgName, VolumeLabel)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readFwCfg(sysfs string) ([]byte, error) {
	f, err := os.Open(filepath.Join(sysfs, "firmware/qemu_fw_cfg/by_name", FwCfgName, "raw"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f, "fw_cfg "+FwCfgName)
}

func readLimited(r io.Reader, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: reading %s: %w", what, err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("config: %s is larger than %d bytes", what, MaxSize)
	}
	return b, nil
}

// findVolume returns the device of the one block device labelled
// BULWARKCFG, or an error wrapping os.ErrNotExist when there is none.
func findVolume(sysfs, devDir string) (string, error) {
	entries, err := os.ReadDir(filepath.Join(sysfs, "class/block"))
	if err != nil {
		return "", fmt.Errorf("config: no block devices: %w", os.ErrNotExist)
	}
	var found []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "dm-") {
			continue
		}
		dev := filepath.Join(devDir, name)
		if label, fs := probeLabel(dev); label == VolumeLabel && (fs == "vfat" || fs == "iso9660") {
			found = append(found, dev)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("config: no volume labelled %s: %w", VolumeLabel, os.ErrNotExist)
	case 1:
		return found[0], nil
	}
	slices.Sort(found)
	return "", fmt.Errorf("config: %d volumes are labelled %s (%s); attach exactly one", len(found), VolumeLabel, strings.Join(found, ", "))
}

func probeLabel(dev string) (label, fs string) {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	info, err := blkid.Probe(f, blkid.WithSkipLocking(true))
	if err != nil || info == nil || info.Label == nil {
		return "", ""
	}
	return *info.Label, info.Name
}

// readVolume mounts the config volume read-only, without devices, setuid
// or execution, reads config.json and unmounts it again.
func readVolume(dev, mountDir string) ([]byte, error) {
	if err := os.MkdirAll(mountDir, 0o700); err != nil {
		return nil, err
	}
	flags := uintptr(unix.MS_RDONLY | unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC)
	var mountErr error
	for _, fs := range []string{"vfat", "iso9660"} {
		if mountErr = unix.Mount(dev, mountDir, fs, flags, ""); mountErr == nil {
			break
		}
	}
	if mountErr != nil {
		return nil, fmt.Errorf("config: mounting %s: %w", dev, mountErr)
	}
	defer unix.Unmount(mountDir, 0)
	f, err := os.Open(filepath.Join(mountDir, VolumeFile))
	if err != nil {
		return nil, fmt.Errorf("config: volume %s has no %s: %w", dev, VolumeFile, err)
	}
	defer f.Close()
	return readLimited(f, dev+":"+VolumeFile)
}
