//go:build !bulwarktest

package service

import "github.com/bulwarkvm/bulwark/internal/control"

// addTestHooks adds nothing: the test image's build (tag bulwarktest)
// adds operations that crash the process on purpose (testhooks.go).
func addTestHooks(map[string]control.Handler) {}
