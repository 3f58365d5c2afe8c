//go:build bulwarktest

package main

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// TestHook is the test image's way to break a service on purpose
// (TestServiceIsolation): "kill" sends it SIGKILL from PID1; any other
// hook is the service's own test operation ("test.panic",
// "test.forbidden-syscall"), compiled only into the test image.
func (b *boot) TestHook(name, hook string) (any, error) {
	var s *service
	for _, x := range b.services {
		if x.name == name {
			s = x
		}
	}
	if s == nil {
		return nil, fmt.Errorf("no service %q", name)
	}
	if hook == "kill" {
		s.mu.Lock()
		p := s.p
		s.mu.Unlock()
		if p == nil {
			return nil, fmt.Errorf("service %s is not running", name)
		}
		return fmt.Sprintf("SIGKILL to pid %d", p.Pid()), p.Signal(syscall.SIGKILL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var res any
	err := s.call(ctx, "test."+hook, nil, &res)
	return res, err
}
