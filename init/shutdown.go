package main

import (
	"context"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/audit"
)

// teardownTimeout bounds the whole teardown, so that a stuck step cannot
// keep a node from powering off.
const teardownTimeout = 60 * time.Second

// waitForShutdown blocks until a shutdown is requested, then powers off.
func (b *boot) waitForShutdown() {
	reason := <-b.shutdown
	b.powerOff(reason)
}

// powerOff runs the teardown steps in reverse order and powers the machine
// off. "powered off cleanly" is printed only when every step succeeded.
func (b *boot) powerOff(reason string) {
	b.log.Info("shutting down", "reason", reason)
	b.audit.Append(audit.KindShutdown, "", "", reason, "started; volumes will be crypto-erased")
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	clean := true
	for i := len(b.teardown) - 1; i >= 0; i-- {
		s := b.teardown[i]
		t0 := time.Now()
		if err := s.fn(ctx); err != nil {
			clean = false
			b.log.Error("teardown step failed", "step", s.name, "err", err)
			continue
		}
		b.log.Info("teardown", "step", s.name, "took", round(time.Since(t0)))
	}
	unix.Sync()
	if clean {
		b.log.Info("powered off cleanly")
	} else {
		b.log.Error("powering off after failed teardown steps")
	}
	drainConsole()
	for {
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		b.log.Error("power off failed; retrying", "err", err)
		time.Sleep(5 * time.Second)
	}
}

// drainConsole waits until the console has transmitted what was written to
// it, so that the last lines reach the serial port before power goes.
func drainConsole() {
	_ = unix.IoctlSetInt(int(os.Stdout.Fd()), unix.TCSBRK, 1)
}
