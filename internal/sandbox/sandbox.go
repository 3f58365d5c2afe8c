// Package sandbox confines a service process of the node once it has what
// it needs: no_new_privs, a Landlock ruleset over the files it may open
// (where the kernel offers Landlock), and a seccomp filter that allows the
// system calls it makes and kills the process on any other. The uid, gid
// and capabilities are set by PID1 when it starts the process
// (internal/proc); Apply checks them. It uses the maintained pure-Go
// libraries of the field (go-landlock, go-seccomp-bpf), so the binary
// stays static.
package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strings"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// Policy is what a service may do.
type Policy struct {
	// ReadOnly and ReadWrite are the directories (and what is below them)
	// the service may open; everything else is refused by Landlock.
	ReadOnly, ReadWrite []string
	// Syscalls are the system calls the service makes beyond Runtime's.
	Syscalls []string
	// RequireLandlock makes a kernel without Landlock an error instead
	// of a report: for a service whose capabilities reach past its
	// files' modes (the backup process's CAP_DAC_READ_SEARCH).
	RequireLandlock bool
}

// Report says what Apply put in place, for status.
type Report struct {
	Landlock string `json:"landlock"` // "ABI v2", or why not
	Seccomp  string `json:"seccomp"`
}

// Runtime is what every Go service of the node calls: the runtime's
// memory, threads, signals, timers and poller, and reading and writing
// the descriptors it was given.
var Runtime = []string{
	// memory and threads
	"mmap", "munmap", "madvise", "mprotect", "brk", "mremap", "clone", "clone3", "set_robust_list", "rseq",
	"futex", "sched_yield", "sched_getaffinity", "gettid", "getpid", "tgkill", "exit", "exit_group",
	// signals; restart_syscall is how the kernel resumes a sleep that a
	// stop and continue interrupted (TestStopContinue)
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
	// time
	"nanosleep", "clock_gettime", "clock_nanosleep", "gettimeofday", "setitimer", "timer_create", "timer_settime", "timer_delete",
	// the poller and descriptors
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_wait", "eventfd2", "pipe2", "read", "write", "readv", "writev",
	"pread64", "pwrite64", "close", "fcntl", "dup", "dup3", "fstat", "newfstatat", "lseek", "ioctl",
	// randomness, process info the runtime reads
	"getrandom", "uname", "prctl", "arch_prctl", "getrlimit", "prlimit64", "getuid", "geteuid", "getgid", "getegid",
	// files the runtime opens at start (/sys/kernel/mm/transparent_hugepage)
	"openat", "readlinkat",
	// sockets given by PID1: the control socket's messages
	"recvmsg", "sendmsg", "shutdown", "getsockopt", "setsockopt", "getsockname", "getpeername",
}

// Apply confines the calling process, all its threads, for good.
func Apply(p Policy) (Report, error) {
	var r Report
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return r, fmt.Errorf("sandbox: no_new_privs: %w", err)
	}
	// Not dumpable: no core, and no other process of its uid may read
	// its memory (which holds the keys it was given) or ptrace it.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return r, fmt.Errorf("sandbox: PR_SET_DUMPABLE: %w", err)
	}
	// Landlock where the kernel has it; a kernel without it (or with it
	// disabled) is reported, not fatal: seccomp still applies.
	abi, err := llsys.LandlockGetABIVersion()
	switch {
	case err != nil && p.RequireLandlock:
		return r, fmt.Errorf("sandbox: landlock, which this service requires: %w", err)
	case err != nil:
		r.Landlock = "unavailable: " + err.Error()
	default:
		ro, err := pinDirs(p.ReadOnly)
		if err != nil {
			return r, err
		}
		defer unpin(ro)
		rw, err := pinDirs(p.ReadWrite)
		if err != nil {
			return r, err
		}
		defer unpin(rw)
		var rules []landlock.Rule
		if len(ro) > 0 {
			rules = append(rules, landlock.RODirs(fdPaths(ro)...))
		}
		if len(rw) > 0 {
			rules = append(rules, landlock.RWDirs(fdPaths(rw)...))
		}
		if err := landlock.V5.BestEffort().RestrictPaths(rules...); err != nil {
			return r, fmt.Errorf("sandbox: landlock: %w", err)
		}
		r.Landlock = fmt.Sprintf("ABI v%d", abi)
	}
	names := append(append([]string{}, Runtime...), p.Syscalls...)
	f := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: seccomp.ActionKillProcess,
			Syscalls:      []seccomp.SyscallGroup{{Action: seccomp.ActionAllow, Names: dedup(names)}},
		},
	}
	if err := seccomp.LoadFilter(f); err != nil {
		return r, fmt.Errorf("sandbox: seccomp: %w", err)
	}
	r.Seccomp = fmt.Sprintf("filter, %d system calls allowed, others kill the process", len(f.Policy.Syscalls[0].Names))
	return r, nil
}

// pinDirs opens each directory as an O_PATH descriptor without following
// a symbolic link anywhere on its path: a rule must cover the directory
// the policy names, not whatever a link planted there (by the workload,
// which owns the volumes) points to. The rule is then made through
// /proc/self/fd/N, the very directory opened, so nothing can be swapped
// in between.
func pinDirs(dirs []string) ([]int, error) {
	var fds []int
	for _, d := range dirs {
		fd, err := unix.Openat2(unix.AT_FDCWD, d, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			unpin(fds)
			return nil, fmt.Errorf("sandbox: rule directory %s (a symbolic link on its path is refused): %w", d, err)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

func unpin(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func fdPaths(fds []int) []string {
	var out []string
	for _, fd := range fds {
		out = append(out, fmt.Sprintf("/proc/self/fd/%d", fd))
	}
	return out
}

func dedup(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range s {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// Self is the confinement of the calling process as the kernel reports it
// in /proc/self/status, for a service's status answer.
type Self struct {
	UID        string `json:"uid"`
	CapEff     string `json:"cap_eff"`
	NoNewPrivs string `json:"no_new_privs"`
	Seccomp    string `json:"seccomp"`
}

// ReadSelf reads Self from /proc/<pid>/status ("self" for the caller).
func ReadSelf(pid string) (Self, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return Self{}, err
	}
	var s Self
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Uid":
			s.UID = strings.Fields(v)[0]
		case "CapEff":
			s.CapEff = v
		case "NoNewPrivs":
			s.NoNewPrivs = v
		case "Seccomp":
			s.Seccomp = v
		}
	}
	if s.UID == "" {
		return s, errors.New("sandbox: no Uid line in /proc/" + pid + "/status")
	}
	return s, nil
}
