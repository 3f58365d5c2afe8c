package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mountPseudoFilesystems mounts the kernel's file systems. Nothing on them
// may be executed, and only /dev holds device nodes.
func mountPseudoFilesystems(b *boot) (string, error) {
	const (
		nosuid = unix.MS_NOSUID
		nodev  = unix.MS_NODEV
		noexec = unix.MS_NOEXEC
	)
	mounts := []struct {
		fstype, target string
		flags          uintptr
		data           string
	}{
		{"proc", "/proc", nosuid | nodev | noexec, "hidepid=invisible"},
		{"sysfs", "/sys", nosuid | nodev | noexec, ""},
		{"devtmpfs", "/dev", nosuid | noexec, "mode=0755"},
		{"tmpfs", "/run", nosuid | nodev | noexec, "mode=0755,size=64m"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return "", err
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			return "", fmt.Errorf("mounting %s on %s: %w", m.fstype, m.target, err)
		}
	}
	// Our records in the kernel log are not rate-limited: they are few, and
	// the log must hold all of them.
	_ = os.WriteFile("/proc/sys/kernel/printk_devkmsg", []byte("on\n"), 0)
	if k, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		b.logh.SetKmsg(k, consoleLogLevel())
	} else {
		b.log.Warn("no kernel log", "err", err)
	}
	return "/proc /sys /dev /run", nil
}

// consoleLogLevel is the kernel's console log level, 4 (what "quiet"
// sets) when it cannot be read.
func consoleLogLevel() int {
	b, err := os.ReadFile("/proc/sys/kernel/printk")
	if err != nil {
		return 4
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 4
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 4
	}
	return n
}
