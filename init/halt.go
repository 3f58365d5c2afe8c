package main

import (
	"context"

	"github.com/bulwarkvm/bulwark/internal/bootlog"
)

// fatal ends the boot in a locked-down halt: the reason goes to the console
// as "bulwark: FATAL: ...", no later stage runs (so no disk is formatted and
// no service starts), and the firewall stays closed. PID1 stays alive and
// waits for the power button or a signal, then tears down what did run and
// powers off. It never returns.
func (b *boot) fatal(err error) {
	b.log.Log(context.Background(), bootlog.LevelFatal, err.Error())
	b.report()
	b.log.Info("halted; press the power button to power off")
	b.waitForShutdown()
	select {} // unreachable: powerOff does not return
}
