// Package powerbutton watches the ACPI power button through its evdev input
// device: the cloud's "stop instance" and QEMU's system_powerdown both press
// it.
package powerbutton

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// Linux input event constants (linux/input-event-codes.h).
const (
	evKey    = 0x01
	keyPower = 116
	// struct input_event on 64-bit: struct timeval (16 bytes), type u16,
	// code u16, value s32.
	eventSize = 24
)

// Watch finds every input device named "Power Button" and sends on pressed
// each time one is pressed. It returns the device paths it watches; none
// found is an error, so that the caller can report a node that cannot be
// stopped gracefully.
func Watch(sysfs, devDir string, pressed chan<- struct{}) ([]string, error) {
	names, _ := filepath.Glob(filepath.Join(sysfs, "class/input/event*/device/name"))
	var devs []string
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != "Power Button" {
			continue
		}
		ev := filepath.Base(filepath.Dir(filepath.Dir(n)))
		dev := filepath.Join(devDir, "input", ev)
		f, err := os.Open(dev)
		if err != nil {
			return devs, fmt.Errorf("powerbutton: %w", err)
		}
		devs = append(devs, dev)
		// The init watches the button in PID1, where a panic would
		// bring the node down: a panic in the reader is reported and
		// the reader runs again (after 1 s, doubling to 30 s), so the
		// button keeps working (docs/boot.md).
		go func() {
			defer f.Close()
			safego.Restart("power button "+dev, nil, func() error { read(f, pressed); return nil })
		}()
	}
	if len(devs) == 0 {
		return nil, fmt.Errorf("powerbutton: no input device named \"Power Button\" (are the button and evdev modules loaded?)")
	}
	return devs, nil
}

// testHookRead, nil outside tests, runs at the start of the reading loop.
var testHookRead func()

// read sends on pressed for every press it reads from f, until f fails.
func read(f *os.File, pressed chan<- struct{}) {
	if testHookRead != nil {
		testHookRead()
	}
	buf := make([]byte, eventSize*16)
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+eventSize <= n; off += eventSize {
			if IsPress(buf[off : off+eventSize]) {
				select {
				case pressed <- struct{}{}:
				default: // a shutdown is already pending
				}
			}
		}
	}
}

// IsPress reports whether one input_event is a power key press.
func IsPress(ev []byte) bool {
	if len(ev) != eventSize {
		return false
	}
	typ := binary.LittleEndian.Uint16(ev[16:18])
	code := binary.LittleEndian.Uint16(ev[18:20])
	value := int32(binary.LittleEndian.Uint32(ev[20:24]))
	return typ == evKey && code == keyPower && value == 1
}
