package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// nofile is PID1's descriptor limit (inherited by its children).
const nofile = 65536

// harden closes the ways key material could leave RAM or the running
// kernel could be replaced: no core dumps (rlimit 0, inherited by every
// child, and PID1 itself not dumpable), no kexec, no kernel pointers or
// kernel log for unprivileged readers. Swap is never enabled: nothing in
// the image calls swapon.
func harden(b *boot) (string, error) {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return "", fmt.Errorf("disabling core dumps: %w", err)
	}
	// A descriptor table far larger than the kernel's default of 4096 for
	// PID1, so that the front doors' connection limits, each within this
	// budget less a reserve (frontdoor.FDReserve), leave room for the
	// management API, keying, the audit log and backups.
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: nofile, Max: nofile}); err != nil {
		return "", fmt.Errorf("raising the descriptor limit: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return "", fmt.Errorf("PR_SET_DUMPABLE: %w", err)
	}
	sysctls := []struct{ path, value string }{
		{"/proc/sys/fs/suid_dumpable", "0"},
		{"/proc/sys/kernel/core_pattern", "|/bin/false"},
		{"/proc/sys/kernel/kexec_load_disabled", "1"},
		{"/proc/sys/kernel/kptr_restrict", "2"},
		{"/proc/sys/kernel/dmesg_restrict", "1"},
		{"/proc/sys/kernel/unprivileged_bpf_disabled", "1"},
		// The workload owns the data volumes: it must not hard-link or
		// plant links to files it cannot read and have root follow them
		// (a backup source, the audit file).
		{"/proc/sys/fs/protected_hardlinks", "1"},
		{"/proc/sys/fs/protected_symlinks", "1"},
	}
	var set []string
	for _, s := range sysctls {
		if err := os.WriteFile(s.path, []byte(s.value+"\n"), 0); err != nil {
			return "", fmt.Errorf("%s: %w", s.path, err)
		}
		set = append(set, strings.TrimPrefix(s.path, "/proc/sys/"))
	}
	// Fail closed if anything ever enabled swap: keys must stay in RAM.
	swaps, err := os.ReadFile("/proc/swaps")
	if err != nil {
		return "", fmt.Errorf("reading /proc/swaps: %w", err)
	}
	if lines := strings.Split(strings.TrimSpace(string(swaps)), "\n"); len(lines) > 1 {
		return "", fmt.Errorf("swap is enabled (%s); key material could reach a disk", strings.Join(lines[1:], "; "))
	}
	return fmt.Sprintf("core dumps off, not dumpable, no swap, %d sysctls, %d descriptors", len(set), nofile), nil
}
