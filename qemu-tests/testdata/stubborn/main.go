// Command stubborn is a backup command that will not stop: it ignores
// SIGTERM, SIGPIPE and SIGHUP, writes a little of a backup stream, then
// sleeps without writing or exiting. TestTeardownBound uses it to show
// that such a command cannot hold off the node's teardown.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	signal.Ignore(syscall.SIGTERM, syscall.SIGPIPE, syscall.SIGHUP)
	os.Stdout.Write(make([]byte, 4096))
	fmt.Fprintln(os.Stderr, "stubborn: wrote 4096 bytes; now ignoring SIGTERM and sleeping")
	for {
		time.Sleep(time.Hour)
	}
}
