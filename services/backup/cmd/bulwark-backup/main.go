// Command bulwark-backup is the node's backup service: PID1 starts it
// from the system image (/usr/libexec/bulwark/backup) as its own
// unprivileged process, and it runs the backup rounds and the
// object-store client (rounds.go; the protocol with PID1 is
// services/backup). It is the one service that is
// not the init binary started with a role: the S3 client it links
// (minio-go) would otherwise be initialised in PID1 and every other
// service at each start, and would not fit the initramfs's budget.
package main

import (
	"fmt"
	"os"

	"github.com/bulwarkvm/bulwark/services/service"
)

func main() {
	name, ctl, files, err := service.Descriptors(os.Args)
	if err == nil && name != "backup" {
		err = fmt.Errorf("this program is the backup service, not %q", name)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bulwark-backup:", err)
		os.Exit(2)
	}
	os.Exit(run(ctl, files))
}
