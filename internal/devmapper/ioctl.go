// Package devmapper drives the kernel's device-mapper through its ioctl
// interface on /dev/mapper/control: create a device, load its table,
// resume it, read its table and status, remove it. crypt.go builds the
// dm-crypt table on top, with the key handed over through the kernel
// keyring.
package devmapper

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ControlPath is the device-mapper control node devtmpfs creates when the
// dm_mod module is loaded.
const ControlPath = "/dev/mapper/control"

// The ioctl ABI, from linux/dm-ioctl.h.
const (
	ioctlHeaderSize = 312 // sizeof(struct dm_ioctl)
	targetSpecSize  = 40  // sizeof(struct dm_target_spec)
	nameLen         = 128
	uuidLen         = 129

	cmdVersion     = 0
	cmdDevCreate   = 3
	cmdDevRemove   = 4
	cmdDevSuspend  = 6
	cmdDevStatus   = 7
	cmdTableLoad   = 9
	cmdTableStatus = 12

	flagReadOnly    = 1 << 0
	flagSuspend     = 1 << 1
	flagStatusTable = 1 << 4
	flagBufferFull  = 1 << 8
	flagSecureData  = 1 << 15 // the kernel wipes its copy of the buffer
)

// Interface version this package speaks (major must match the kernel's).
var ioctlVersion = [3]uint32{4, 0, 0}

func ioctlNumber(cmd uintptr) uintptr {
	// _IOWR(0xfd, cmd, struct dm_ioctl)
	return 3<<30 | ioctlHeaderSize<<16 | 0xfd<<8 | cmd
}

// header mirrors struct dm_ioctl (native byte order: it is a local ABI).
type header struct {
	Version     [3]uint32
	DataSize    uint32
	DataStart   uint32
	TargetCount uint32
	OpenCount   int32
	Flags       uint32
	EventNr     uint32
	Padding     uint32
	Dev         uint64
	Name        [nameLen]byte
	UUID        [uuidLen]byte
	Data        [7]byte
}

// targetSpec mirrors struct dm_target_spec.
type targetSpec struct {
	SectorStart uint64
	Length      uint64
	Status      int32
	Next        uint32
	TargetType  [16]byte
}

// Target is one line of a device-mapper table, in 512-byte sectors.
type Target struct {
	Start, Length uint64
	Type          string
	Params        string
}

// Control is an open /dev/mapper/control.
type Control struct{ f *os.File }

// Open opens the control node.
func Open() (*Control, error) {
	f, err := os.OpenFile(ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("devmapper: %w (is dm_mod loaded?)", err)
	}
	return &Control{f: f}, nil
}

// Close closes the control node.
func (c *Control) Close() error { return c.f.Close() }

// call runs one ioctl on the device name (and uuid, for create). payload
// follows the header; the buffer holds at least extra bytes of reply. It
// returns the header and the data area the kernel filled. A buffer the
// kernel found too small is grown and the call retried. The buffer is
// cleared after every call: for a table load it held the table.
func (c *Control) call(cmd uintptr, name, uuid string, flags uint32, payload []byte, extra int) (header, []byte, error) {
	if len(name) >= nameLen {
		return header{}, nil, fmt.Errorf("device name %q is longer than %d bytes", name, nameLen-1)
	}
	if len(uuid) >= uuidLen {
		return header{}, nil, fmt.Errorf("uuid %q is longer than %d bytes", uuid, uuidLen-1)
	}
	size := ioctlHeaderSize + max(len(payload), extra)
	for {
		buf := make([]byte, size)
		h := header{Version: ioctlVersion, DataSize: uint32(size), DataStart: ioctlHeaderSize, Flags: flags}
		copy(h.Name[:], name)
		copy(h.UUID[:], uuid)
		if cmd == cmdTableLoad {
			h.TargetCount = 1 // Load sends exactly one target
		}
		var w bytes.Buffer
		binary.Write(&w, binary.NativeEndian, &h)
		copy(buf, w.Bytes())
		copy(buf[ioctlHeaderSize:], payload)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, c.f.Fd(), ioctlNumber(cmd), uintptr(unsafe.Pointer(&buf[0])))
		var out header
		binary.Read(bytes.NewReader(buf), binary.NativeEndian, &out)
		var data []byte
		if start, end := int(out.DataStart), min(int(out.DataSize), len(buf)); start < end {
			data = append(data, buf[start:end]...)
		}
		clear(buf)
		if errno != 0 {
			return out, nil, errno
		}
		if out.Flags&flagBufferFull != 0 && size < 1<<20 {
			size *= 4
			continue
		}
		return out, data, nil
	}
}

// Create creates an empty, suspended device and returns its device number.
func (c *Control) Create(name, uuid string) (uint64, error) {
	h, _, err := c.call(cmdDevCreate, name, uuid, 0, nil, 0)
	if errors.Is(err, unix.EBUSY) {
		return 0, fmt.Errorf("devmapper: create %s: a device with this name or uuid exists: %w", name, err)
	}
	if err != nil {
		return 0, fmt.Errorf("devmapper: create %s: %w", name, err)
	}
	return h.Dev, nil
}

// Load loads a table into the device's inactive slot. secure asks the
// kernel to wipe its copy of the ioctl buffer (for tables with keys).
func (c *Control) Load(name string, targets []Target, secure bool) error {
	flags := uint32(0)
	if secure {
		flags |= flagSecureData
	}
	return c.load(name, targets, flags)
}

// load loads a table with the given ioctl flags (flagReadOnly for targets
// that must be read-only, such as verity).
func (c *Control) load(name string, targets []Target, flags uint32) error {
	if len(targets) != 1 {
		return fmt.Errorf("devmapper: load %s: %d targets; this package loads exactly one", name, len(targets))
	}
	t := targets[0]
	if len(t.Type) >= 16 {
		return fmt.Errorf("devmapper: target type %q is too long", t.Type)
	}
	params := append([]byte(t.Params), 0)
	next := targetSpecSize + len(params)
	next = (next + 7) &^ 7
	spec := targetSpec{SectorStart: t.Start, Length: t.Length, Next: uint32(next)}
	copy(spec.TargetType[:], t.Type)
	var w bytes.Buffer
	binary.Write(&w, binary.NativeEndian, &spec)
	payload := make([]byte, next)
	copy(payload, w.Bytes())
	copy(payload[targetSpecSize:], params)
	defer clear(payload)
	if _, _, err := c.call(cmdTableLoad, name, "", flags, payload, 0); err != nil {
		return fmt.Errorf("devmapper: loading the %s table of %s: %w", t.Type, name, err)
	}
	return nil
}

// Resume activates the loaded table.
func (c *Control) Resume(name string) error {
	if _, _, err := c.call(cmdDevSuspend, name, "", 0, nil, 0); err != nil {
		return fmt.Errorf("devmapper: resume %s: %w", name, err)
	}
	return nil
}

// Remove removes the device. It fails with EBUSY while the device is open
// (mounted, for instance).
func (c *Control) Remove(name string) error {
	if _, _, err := c.call(cmdDevRemove, name, "", 0, nil, 0); err != nil {
		return fmt.Errorf("devmapper: remove %s: %w", name, err)
	}
	return nil
}

// Exists reports whether a device of this name exists.
func (c *Control) Exists(name string) (bool, error) {
	_, _, err := c.call(cmdDevStatus, name, "", 0, nil, 0)
	if errors.Is(err, unix.ENXIO) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("devmapper: status of %s: %w", name, err)
	}
	return true, nil
}

// Table returns the active table as the kernel reports it: what any
// process allowed to open the control node can read back.
func (c *Control) Table(name string) ([]Target, error) {
	return c.tableStatus(name, flagStatusTable)
}

// Status returns the status of each target of the active table.
func (c *Control) Status(name string) ([]Target, error) {
	return c.tableStatus(name, 0)
}

func (c *Control) tableStatus(name string, flags uint32) ([]Target, error) {
	h, data, err := c.call(cmdTableStatus, name, "", flags, nil, 16<<10)
	if err != nil {
		return nil, fmt.Errorf("devmapper: table status of %s: %w", name, err)
	}
	var out []Target
	off := 0
	for i := uint32(0); i < h.TargetCount; i++ {
		if off+targetSpecSize > len(data) {
			return nil, fmt.Errorf("devmapper: table status of %s: truncated reply", name)
		}
		var s targetSpec
		binary.Read(bytes.NewReader(data[off:off+targetSpecSize]), binary.NativeEndian, &s)
		p := data[off+targetSpecSize:]
		if j := bytes.IndexByte(p, 0); j >= 0 {
			p = p[:j]
		}
		tt := s.TargetType[:]
		if j := bytes.IndexByte(tt, 0); j >= 0 {
			tt = tt[:j]
		}
		out = append(out, Target{Start: s.SectorStart, Length: s.Length, Type: string(tt), Params: string(p)})
		// In replies, next is the offset from the start of the data area.
		off = int(s.Next)
	}
	return out, nil
}
