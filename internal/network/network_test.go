package network

import (
	"net"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// TestUpLoopback brings lo up in a fresh network namespace, where the
// kernel creates it down. It needs root, like the other namespace tests.
func TestUpLoopback(t *testing.T) {
	done := make(chan error, 1)
	go func() {
		// The thread enters a new namespace and is never unlocked: it
		// exits with this goroutine instead of returning to the pool.
		runtime.LockOSThread()
		if _, err := netns.New(); err != nil {
			done <- err
			return
		}
		before, err := net.InterfaceByName("lo")
		if err != nil {
			done <- err
			return
		}
		if before.Flags&net.FlagUp != 0 {
			t.Errorf("lo is already up in a new namespace: flags %v", before.Flags)
		}
		if err := upLoopback(); err != nil {
			done <- err
			return
		}
		after, err := net.InterfaceByName("lo")
		if err != nil {
			done <- err
			return
		}
		if after.Flags&net.FlagUp == 0 {
			t.Errorf("lo is not up after upLoopback: flags %v", after.Flags)
		}
		if err := upLoopback(); err != nil {
			t.Errorf("upLoopback on a loopback that is already up: %v", err)
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
