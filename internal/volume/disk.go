package volume

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Disk is a whole block device found in sysfs.
type Disk struct {
	Name    string // kernel name, such as vdb
	Path    string // /dev/<name>
	DevNo   string // "major:minor"
	Serial  string
	ByID    []string // the names udev would give it under /dev/disk/by-id
	Parts   []string // kernel names of its partitions
	RO      bool
	Holders []string // devices stacked on it (device-mapper)
}

// ListDisks lists the whole disks under sysfs (/sys normally), leaving out
// virtual devices that can never be data disks.
func ListDisks(sysfs string) ([]Disk, error) {
	entries, err := os.ReadDir(filepath.Join(sysfs, "block"))
	if err != nil {
		return nil, fmt.Errorf("volume: listing disks: %w", err)
	}
	var disks []Disk
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "dm-") || strings.HasPrefix(name, "zram") {
			continue
		}
		dir := filepath.Join(sysfs, "block", name)
		d := Disk{Name: name, Path: "/dev/" + name, DevNo: readAttr(dir, "dev"), RO: readAttr(dir, "ro") == "1"}
		d.Serial = readAttr(dir, "serial") // virtio-blk
		if d.Serial == "" {
			d.Serial = readAttr(dir, "device/serial") // NVMe, some SCSI
		}
		d.ByID = byIDNames(dir, name, d.Serial)
		subs, _ := os.ReadDir(dir)
		for _, s := range subs {
			if strings.HasPrefix(s.Name(), name) {
				if _, err := os.Stat(filepath.Join(dir, s.Name(), "partition")); err == nil {
					d.Parts = append(d.Parts, s.Name())
				}
			}
		}
		holders, _ := os.ReadDir(filepath.Join(dir, "holders"))
		for _, h := range holders {
			d.Holders = append(d.Holders, h.Name())
		}
		disks = append(disks, d)
	}
	return disks, nil
}

func readAttr(dir, name string) string {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// byIDNames reproduces the /dev/disk/by-id names udev's rules give virtio
// and NVMe disks; the image has no udev, so the init derives them.
func byIDNames(dir, name, serial string) []string {
	if serial == "" {
		return nil
	}
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r <= ' ' || r == '/' {
				return '_'
			}
			return r
		}, strings.TrimSpace(s))
	}
	switch {
	case strings.HasPrefix(name, "vd"):
		return []string{"virtio-" + clean(serial)}
	case strings.HasPrefix(name, "nvme"):
		model := readAttr(dir, "device/model")
		return []string{"nvme-" + clean(model) + "_" + clean(serial)}
	}
	return nil
}

// Find returns the disk with the given serial or by-id name.
func Find(disks []Disk, serial, byID string) (Disk, error) {
	var found []Disk
	for _, d := range disks {
		switch {
		case serial != "" && d.Serial == serial:
			found = append(found, d)
		case byID != "":
			for _, n := range d.ByID {
				if n == byID {
					found = append(found, d)
				}
			}
		}
	}
	want := "serial " + serial
	if byID != "" {
		want = "by-id name " + byID
	}
	switch len(found) {
	case 0:
		var seen []string
		for _, d := range disks {
			seen = append(seen, fmt.Sprintf("%s (serial %q)", d.Name, d.Serial))
		}
		return Disk{}, fmt.Errorf("no disk with %s; disks present: %s", want, strings.Join(seen, ", "))
	case 1:
		return found[0], nil
	}
	return Disk{}, fmt.Errorf("%d disks have %s (%s, %s); refusing to guess", len(found), want, found[0].Name, found[1].Name)
}

// mountedDevices returns the "major:minor" of every mounted device.
func mountedDevices(mountinfo string) (map[string]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint ...
		fs := strings.Fields(sc.Text())
		if len(fs) >= 5 {
			out[fs[2]] = fs[4]
		}
	}
	return out, sc.Err()
}

// checkUsable refuses a disk that must not be formatted: read-only, in use
// by a mount or another device-mapper device, partitioned (the boot disk
// is, and a data disk is used whole), or the config source.
func checkUsable(d Disk, sysfs, mountinfo, configDevice string) error {
	if d.RO {
		return fmt.Errorf("%s is read-only", d.Path)
	}
	if configDevice != "" && (configDevice == d.Path || strings.HasPrefix(configDevice, d.Path) && len(d.Parts) > 0) {
		return fmt.Errorf("%s holds the node's config volume", d.Path)
	}
	mounted, err := mountedDevices(mountinfo)
	if err != nil {
		return err
	}
	if at, ok := mounted[d.DevNo]; ok {
		return fmt.Errorf("%s has a mounted file system (at %s)", d.Path, at)
	}
	for _, p := range d.Parts {
		if at, ok := mounted[readAttr(filepath.Join(sysfs, "block", d.Name, p), "dev")]; ok {
			return fmt.Errorf("%s has a mounted file system on %s (at %s)", d.Path, p, at)
		}
	}
	if len(d.Holders) > 0 {
		return fmt.Errorf("%s is in use by %s", d.Path, strings.Join(d.Holders, ", "))
	}
	if len(d.Parts) > 0 {
		return fmt.Errorf("%s has a partition table (%s); data disks are used whole, and the boot disk is partitioned", d.Path, strings.Join(d.Parts, ", "))
	}
	return nil
}
