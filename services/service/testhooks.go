//go:build bulwarktest

package service

import (
	"context"
	"encoding/json"
	"os"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/control"
)

// Test-only operations, compiled only into the test image's init and
// backup program (-tags bulwarktest): TestServiceIsolation makes a service panic
// outside any recovery, and make a system call its filter forbids.
func addTestHooks(h map[string]control.Handler) {
	h["test.panic"] = func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
		go func() { panic("test hook: injected panic in a service") }()
		return nil, nil, nil
	}
	h["test.forbidden-syscall"] = func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
		unix.Syscall(unix.SYS_UNSHARE, unix.CLONE_NEWNS, 0, 0)
		return "still alive", nil, nil
	}
}
