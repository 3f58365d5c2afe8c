package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/bulwarkvm/bulwark/services/backup"
	"github.com/bulwarkvm/bulwark/services/frontdoor"
	"github.com/bulwarkvm/bulwark/services/keying"
	"github.com/bulwarkvm/bulwark/services/mgmt"
)

// runService is the init binary started as a service (see supervise.go):
// argv is [serviceArgv0, name, number of extra descriptors]. Descriptor 3
// is the control socket, 4 and on the descriptors PID1 passed. One binary
// for PID1 and every service keeps one Go runtime and one set of
// libraries in the initramfs, one build and one measurement; each process
// still runs only its own role's code and confines itself before it faces
// the network.
func runService(argv []string) int {
	if len(argv) != 3 {
		fmt.Fprintln(os.Stderr, "bulwark: a service is started by PID1 only")
		return 2
	}
	n, err := strconv.Atoi(argv[2])
	if err != nil || n < 0 || n > 16 {
		fmt.Fprintln(os.Stderr, "bulwark: bad descriptor count", argv[2])
		return 2
	}
	ctl := os.NewFile(3, "control")
	var files []*os.File
	for i := 0; i < n; i++ {
		files = append(files, os.NewFile(uintptr(4+i), fmt.Sprintf("fd%d", 4+i)))
	}
	switch argv[1] {
	case "frontdoor":
		return frontdoor.Main(ctl, files)
	case "mgmt":
		return mgmt.Main(ctl, files)
	case "keying":
		return keying.Main(ctl, files)
	case "backup":
		return backup.Main(ctl, files)
	}
	fmt.Fprintln(os.Stderr, "bulwark: no service", argv[1])
	return 2
}
