// Package harness boots bulwark images under QEMU (software emulation, no
// user-mode networking) for the integration tests in qemu-tests/: VMs with
// direct kernel or UEFI disk boot, disks and configs, NICs on a bridge inside
// a network namespace the test owns, test clients with chosen addresses,
// packet captures, the serial console and the power button.
//
// Whatever happens — a failed test, a panic, Ctrl-C — VMs, namespaces and
// temporary files are removed: through t.Cleanup, and through Main's signal
// handler for an interrupted run. A run killed outright leaves namespaces
// that the next run sweeps away (see sweepStale).
package harness

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
)

// T is what the harness needs of a test: testing.TB has it, and so does the
// demo's runner, which boots a node outside go test.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	Failed() bool
}

var (
	cleanMu  sync.Mutex
	cleanups = map[int]func(){}
	cleanID  int
)

// addCleanup runs fn when the test ends, or when the run is interrupted.
func addCleanup(t T, fn func()) {
	var once sync.Once
	f := func() { once.Do(fn) }
	cleanMu.Lock()
	cleanID++
	id := cleanID
	cleanups[id] = f
	cleanMu.Unlock()
	t.Cleanup(func() {
		f()
		cleanMu.Lock()
		delete(cleanups, id)
		cleanMu.Unlock()
	})
}

// Main is the TestMain of packages that use the harness: it checks that the
// run has what it needs (root, QEMU, the built image) and cleans up on
// SIGINT/SIGTERM.
func Main(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "qemu-tests: must run as root (network namespaces, tap devices); use make test")
		os.Exit(1)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "qemu-tests: %v: cleaning up\n", s)
		cleanMu.Lock()
		for _, f := range cleanups {
			f()
		}
		cleanMu.Unlock()
		removeExitPaths()
		os.Exit(130)
	}()
	sweepStale()
	code := m.Run()
	removeExitPaths()
	os.Exit(code)
}

var exitPaths []string

// RemoveOnExit removes path when the test process ends (for things shared
// by several tests, such as a test image built once).
func RemoveOnExit(path string) {
	cleanMu.Lock()
	defer cleanMu.Unlock()
	exitPaths = append(exitPaths, path)
}

func removeExitPaths() {
	cleanMu.Lock()
	defer cleanMu.Unlock()
	for _, p := range exitPaths {
		os.RemoveAll(p)
	}
}
