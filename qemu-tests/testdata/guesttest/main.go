// Command guesttest is the PID1 of the test-only guest image (booted with
// rdinit=/usr/libexec/bulwark-tests/guesttest): it prepares the kernel the
// way the production init does (pseudo file systems, the image's
// modules), then runs every Go test binary in /usr/libexec/bulwark-tests
// and reports each as "guesttest: PASS name" or "guesttest: FAIL name",
// then "guesttest: done" and powers off. Extra arguments for the test
// binaries come from the kernel command line: bulwark.testargs=a,b,c.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/kmod"
)

const dir = "/usr/libexec/bulwark-tests"

func main() {
	say := func(f string, a ...any) { fmt.Printf("guesttest: "+f+"\n", a...) }
	defer powerOff()
	for _, m := range []struct{ fs, at, data string }{
		{"proc", "/proc", ""}, {"sysfs", "/sys", ""}, {"devtmpfs", "/dev", ""}, {"tmpfs", "/run", ""}, {"tmpfs", "/tmp", ""},
	} {
		os.MkdirAll(m.at, 0o755)
		if err := unix.Mount(m.fs, m.at, m.fs, 0, m.data); err != nil && err != unix.EBUSY {
			say("FAIL setup: mounting %s: %v", m.at, err)
			return
		}
	}
	raw, err := os.ReadFile("/etc/bulwark/modules.list")
	if err != nil {
		say("FAIL setup: %v", err)
		return
	}
	mods, err := kmod.ParseList(raw)
	if err != nil {
		say("FAIL setup: %v", err)
		return
	}
	modDir, err := kmod.RunningKernelDir()
	if err != nil {
		say("FAIL setup: %v", err)
		return
	}
	loader, err := kmod.NewLoader(modDir)
	if err != nil {
		say("FAIL setup: %v", err)
		return
	}
	failed := loader.LoadList(mods)
	for _, m := range mods {
		if e, bad := failed[m.Name]; bad && !m.Optional {
			say("FAIL setup: module %s: %v", m.Name, e)
			return
		}
	}
	os.MkdirAll("/run/cryptsetup", 0o700)
	var extra []string
	if cmdline, err := os.ReadFile("/proc/cmdline"); err == nil {
		for _, f := range strings.Fields(string(cmdline)) {
			if v, ok := strings.CutPrefix(f, "bulwark.testargs="); ok {
				extra = strings.Split(v, ",")
			}
		}
	}
	tests, _ := filepath.Glob(filepath.Join(dir, "*.test"))
	if len(tests) == 0 {
		say("FAIL setup: no test binaries in %s", dir)
		return
	}
	for _, t := range tests {
		name := filepath.Base(t)
		cmd := exec.Command(t, append([]string{"-test.v"}, extra...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
		cmd.Dir = "/tmp"
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "BULWARK_GUEST=1", "DM_DISABLE_UDEV=1", "TMPDIR=/tmp"}
		if err := cmd.Run(); err != nil {
			say("FAIL %s: %v", name, err)
			continue
		}
		say("PASS %s", name)
	}
	say("done")
}

func powerOff() {
	unix.Sync()
	unix.IoctlSetInt(1, unix.TCSBRK, 1)
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
