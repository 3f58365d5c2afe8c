package main

import (
	"strings"

	"github.com/bulwarkvm/bulwark/internal/powerbutton"
)

// watchPowerButton turns a press of the ACPI power button into a shutdown
// request. A machine without one can still be stopped by signal; that is a
// warning, not a failure.
func watchPowerButton(b *boot) (string, error) {
	pressed := make(chan struct{}, 1)
	devs, err := powerbutton.Watch("/sys", "/dev", pressed)
	if err != nil {
		return "", warning{err.Error()}
	}
	b.goSafe("power button", func() {
		for range pressed {
			b.requestShutdown("power button")
		}
	})
	return strings.Join(devs, " "), nil
}
