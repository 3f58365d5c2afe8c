package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/safego"
)

// The teardown is bounded, whatever hangs: a client holding a connection
// open, a backup command that ignores SIGTERM, a step that ignores its
// context. teardownTimeout is the whole bound, from the shutdown request
// to the power-off call (docs/boot.md).
const teardownTimeout = 60 * time.Second

// defaultStepShare is a step's time unless it registered its own.
const defaultStepShare = 10 * time.Second

// abandonGrace is how long past its deadline a step gets to return
// before the teardown leaves it running and goes on without it.
const abandonGrace = 2 * time.Second

// errCutShort marks a step that ran out of its share and killed what was
// left of its work (connections, processes) instead of finishing it.
var errCutShort = errors.New("cut short")

// waitForShutdown blocks until a shutdown is requested, then powers off.
func (b *boot) waitForShutdown() {
	reason := <-b.shutdown
	b.powerOff(reason)
}

// powerOff runs the teardown steps in reverse order of registration and
// powers the machine off. Each step runs under its own deadline: its share,
// never more than what is left of the bound less what the key-removing
// steps after it have as their shares. A step that overruns is cut short: the teardown
// kills every other process (kill(-1) spares only PID1), so that nothing
// holds a volume busy, and goes on. "powered off cleanly" is printed only
// when every step succeeded in time.
func (b *boot) powerOff(reason string) {
	b.log.Info("shutting down", "reason", reason)
	b.audit.Append(audit.KindShutdown, "", "", reason, "started; volumes will be crypto-erased")
	failed, cut := b.runTeardown(time.Now().Add(teardownTimeout))
	unix.Sync()
	switch {
	case failed == 0:
		b.log.Info("powered off cleanly")
	case len(cut) > 0:
		b.log.Error("powering off after failed teardown steps", "cut_short", strings.Join(cut, ", "))
	default:
		b.log.Error("powering off after failed teardown steps")
	}
	drainConsole()
	for {
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		b.log.Error("power off failed; retrying", "err", err)
		time.Sleep(5 * time.Second)
	}
}

// runTeardown runs the steps, last registered first, and returns how many
// failed and the names of those cut short.
func (b *boot) runTeardown(deadline time.Time) (failed int, cut []string) {
	for i := len(b.teardown) - 1; i >= 0; i-- {
		s := b.teardown[i]
		// Time kept for the key-removing steps still to come.
		var reserve time.Duration
		for _, later := range b.teardown[:i] {
			if later.essential {
				reserve += later.effectiveShare()
			}
		}
		share := s.effectiveShare()
		stepDeadline := time.Now().Add(share)
		if limit := deadline.Add(-reserve); limit.Before(stepDeadline) {
			stepDeadline = limit
		}
		if s.essential && stepDeadline.Before(time.Now().Add(time.Second)) {
			// The bound is spent, but a key-removing step still runs:
			// a node that powers off with a readable header is worse
			// than one that powers off a few seconds late.
			stepDeadline = time.Now().Add(time.Second)
		}
		t0 := time.Now()
		err, abandoned := runStep(s, stepDeadline)
		took := round(time.Since(t0))
		switch {
		case abandoned:
			failed++
			cut = append(cut, s.name)
			b.log.Error("teardown step cut short", "step", s.name, "after", took, "err", "did not return by its deadline; left running")
			b.killOthers()
		case errors.Is(err, errCutShort):
			failed++
			cut = append(cut, s.name)
			b.log.Error("teardown step cut short", "step", s.name, "after", took, "err", err)
			b.killOthers()
		case err != nil:
			failed++
			b.log.Error("teardown step failed", "step", s.name, "err", err)
		default:
			b.log.Info("teardown", "step", s.name, "took", took)
		}
	}
	return failed, cut
}

func (s teardownStep) effectiveShare() time.Duration {
	if s.share == 0 {
		return defaultStepShare
	}
	return s.share
}

// runStep runs one step with a context that ends at deadline, and waits
// for it at most abandonGrace longer.
func runStep(s teardownStep, deadline time.Time) (err error, abandoned bool) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		// A panicking step is a failed step, reported (stack, audit
		// record) like any other panic in PID1.
		done <- safego.Call("teardown step "+s.name, func() error { return s.fn(ctx) })
	}()
	t := time.NewTimer(time.Until(deadline) + abandonGrace)
	defer t.Stop()
	select {
	case err := <-done:
		return err, false
	case <-t.C:
		return nil, true
	}
}

// killOthers sends SIGKILL to every process but PID1: the workload, backup
// commands and anything they started. After a step was cut short they are
// what could keep a volume mounted or a pipe open.
func (b *boot) killOthers() {
	if os.Getpid() != 1 {
		return // a test: kill(-1) would reach every process of the user
	}
	if err := unix.Kill(-1, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		b.log.Warn("teardown: killing the remaining processes", "err", err)
	}
}

// drainConsole waits until the console has transmitted what was written to
// it, so that the last lines reach the serial port before power goes.
func drainConsole() {
	_ = unix.IoctlSetInt(int(os.Stdout.Fd()), unix.TCSBRK, 1)
}
