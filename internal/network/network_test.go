package network

import (
	"errors"
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
		done <- upLoopbackInNewNetns()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func upLoopbackInNewNetns() error {
	if _, err := netns.New(); err != nil {
		return err
	}
	if up, err := loUp(); err != nil || up {
		return errors.Join(err, errors.New("lo is already up in a new namespace"))
	}
	if err := upLoopback(); err != nil {
		return err
	}
	if up, err := loUp(); err != nil || !up {
		return errors.Join(err, errors.New("lo is not up after upLoopback"))
	}
	if err := upLoopback(); err != nil {
		return errors.Join(err, errors.New("upLoopback on a loopback that is already up"))
	}
	return nil
}

func loUp() (bool, error) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return false, err
	}
	return lo.Flags&net.FlagUp != 0, nil
}
