package main

import (
	"fmt"
	"os"

	"github.com/bulwarkvm/bulwark/services/frontdoor"
	"github.com/bulwarkvm/bulwark/services/keying"
	"github.com/bulwarkvm/bulwark/services/mgmt"
	svcproc "github.com/bulwarkvm/bulwark/services/service"
)

// runService is the init binary started as a service (see supervise.go):
// argv is [svcproc.Argv0, name, number of extra descriptors]. Descriptor 3
// is the control socket, 4 and on the descriptors PID1 passed. One binary
// for PID1 and these services keeps one Go runtime and one set of
// libraries in the initramfs, one build and one measurement; each process
// still runs only its own role's code and confines itself before it faces
// the network. The backup service is a program of its own on the system
// image (services/backup/cmd/bulwark-backup; docs/boot.md says why).
func runService(argv []string) int {
	name, ctl, files, err := svcproc.Descriptors(argv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bulwark:", err)
		return 2
	}
	switch name {
	case "frontdoor":
		return frontdoor.Main(ctl, files)
	case "mgmt":
		return mgmt.Main(ctl, files)
	case "keying":
		return keying.Main(ctl, files)
	}
	fmt.Fprintln(os.Stderr, "bulwark: no service", name)
	return 2
}
