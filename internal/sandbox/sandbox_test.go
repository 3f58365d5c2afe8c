package sandbox

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestMain runs the confined child of TestApply when started as one.
func TestMain(m *testing.M) {
	switch os.Getenv("BULWARK_SANDBOX_CHILD") {
	case "1":
		os.Exit(child())
	case "sleep":
		os.Exit(sleeper())
	}
	os.Exit(m.Run())
}

func child() int {
	dir := os.Getenv("BULWARK_SANDBOX_DIR")
	// /proc/self so that the child can report what the kernel says of it;
	// in the node PID1 reads each service's status instead.
	rep, err := Apply(Policy{ReadWrite: []string{dir}, ReadOnly: []string{fmt.Sprintf("/proc/%d", os.Getpid())}})
	if err != nil {
		fmt.Println("apply:", err)
		return 1
	}
	self, err := ReadSelf("self")
	b, _ := json.Marshal(map[string]any{"report": rep, "self": self, "err": fmt.Sprint(err)})
	fmt.Println(string(b))
	if _, err := os.ReadFile(dir + "/allowed"); err != nil {
		fmt.Println("allowed file:", err)
		return 1
	}
	_, err = os.ReadFile("/etc/hostname")
	fmt.Println("outside:", err)
	// A system call no service makes: the filter kills the process.
	unix.Syscall(unix.SYS_UNSHARE, unix.CLONE_NEWNS, 0, 0)
	fmt.Println("still alive after unshare")
	return 0
}

// sleeper is TestStopContinue's confined child: one thread sleeps in
// nanosleep while the test stops and continues the process.
func sleeper() int {
	if _, err := Apply(Policy{}); err != nil {
		fmt.Println("apply:", err)
		return 1
	}
	runtime.LockOSThread()
	fmt.Println("sleeping")
	ts := unix.Timespec{Sec: 2}
	_, _, e := unix.Syscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
	fmt.Println("slept:", e)
	return 0
}

// TestStopContinue: a confined process that is stopped (SIGSTOP) and
// continued while a thread sleeps goes on. The kernel resumes the
// interrupted sleep with restart_syscall, which the filter must allow: a
// stop and continue (a debugger, a freezer, an operator's kill -STOP)
// must not kill a service by SIGSYS.
func TestStopContinue(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BULWARK_SANDBOX_CHILD=sleep")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	if err != nil || line != "sleeping\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child: %q %v", line, err)
	}
	// The thread is in nanosleep within a moment of its line.
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(100 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGCONT)
	rest, _ := io.ReadAll(r)
	err = cmd.Wait()
	if err != nil || !strings.Contains(string(rest), "slept") {
		t.Fatalf("the stopped and continued child: %v (want exit 0 after its sleep)\n%s", err, rest)
	}
}

// TestApply: a confined process has no_new_privs and seccomp mode 2, may
// open what its policy names, and is killed (SIGSYS) by a system call
// outside its filter.
func TestApply(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(dir+"/allowed", []byte("ok"), 0o644)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BULWARK_SANDBOX_CHILD=1", "BULWARK_SANDBOX_DIR="+dir)
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	ee, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatalf("the child was not killed: %v", err)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
		t.Fatalf("the child ended with %v, want killed by SIGSYS", ws)
	}
	if strings.Contains(string(out), "still alive") {
		t.Fatal("the forbidden call returned")
	}
	var res struct {
		Report Report
		Self   Self
	}
	line, _, _ := strings.Cut(string(out), "\n")
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		t.Fatalf("child's report %q: %v", line, err)
	}
	if res.Self.NoNewPrivs != "1" || res.Self.Seccomp != "2" {
		t.Errorf("/proc/self/status: NoNewPrivs %q Seccomp %q, want 1 and 2", res.Self.NoNewPrivs, res.Self.Seccomp)
	}
	if strings.HasPrefix(res.Report.Landlock, "ABI") && !strings.Contains(string(out), "outside: open /etc/hostname: permission denied") {
		t.Errorf("Landlock is %s but a file outside the policy was opened:\n%s", res.Report.Landlock, out)
	}
}

// TestRuleDirsRefuseSymlinks: a rule directory reached through a symbolic
// link is refused, at its end or on its way (the workload owns the
// volumes and could plant one to widen the backup process's reach).
func TestRuleDirsRefuseSymlinks(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(root+"/real", 0o755)
	os.Mkdir(root+"/real/sub", 0o755)
	os.Symlink(root+"/real", root+"/link")
	for _, d := range []string{root + "/link", root + "/link/sub"} {
		if fds, err := pinDirs([]string{d}); err == nil || !strings.Contains(err.Error(), "symbolic link") {
			unpin(fds)
			t.Errorf("pinDirs(%s): %v, want a refusal", d, err)
		}
	}
	fds, err := pinDirs([]string{root + "/real", root + "/real/sub"})
	if err != nil {
		t.Fatal(err)
	}
	unpin(fds)
}
