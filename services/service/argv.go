package service

import (
	"fmt"
	"os"
	"strconv"
)

// Argv0 is argv[0] of every service process: PID1 starts a service as
// [Argv0, name, number of passed descriptors], whether the program is the
// init binary with a role or a service's own program (the backup service,
// on the system image).
const Argv0 = "bulwark-service"

// MaxFiles bounds the descriptors PID1 passes a service.
const MaxFiles = 16

// Descriptors checks a service's argv and returns its control socket
// (descriptor 3) and the descriptors PID1 passed after it (4 and on).
func Descriptors(argv []string) (name string, ctl *os.File, files []*os.File, err error) {
	if len(argv) != 3 || argv[0] != Argv0 {
		return "", nil, nil, fmt.Errorf("a service is started by PID1 only")
	}
	n, err := strconv.Atoi(argv[2])
	if err != nil || n < 0 || n > MaxFiles {
		return "", nil, nil, fmt.Errorf("bad descriptor count %q", argv[2])
	}
	ctl = os.NewFile(3, "control")
	for i := 0; i < n; i++ {
		files = append(files, os.NewFile(uintptr(4+i), fmt.Sprintf("fd%d", 4+i)))
	}
	return argv[1], ctl, files, nil
}
