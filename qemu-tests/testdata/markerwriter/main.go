// Command markerwriter is the test workload of the volume and backup
// tests: it fills files with a known marker, syncs them, and reports. The
// host then looks for the marker in the raw disk files and must not find
// it. With -on-term it then waits for SIGTERM and, before exiting, writes
// that file: a backup that holds it was taken after the workload stopped.
//
//	markerwriter [-on-term FILE] MIB MARKER FILE...
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// stoppedText is what -on-term writes.
const stoppedText = "stopped by SIGTERM\n"

func main() {
	onTerm := flag.String("on-term", "", "after writing, wait for SIGTERM and then write this file")
	flag.Parse()
	args := flag.Args()
	if len(args) < 3 {
		fmt.Println("usage: markerwriter [-on-term FILE] MIB MARKER FILE...")
		os.Exit(2)
	}
	mib, err := strconv.Atoi(args[0])
	if err != nil || mib < 1 || args[1] == "" {
		fmt.Println("markerwriter: bad size or empty marker")
		os.Exit(2)
	}
	var term chan os.Signal
	if *onTerm != "" {
		// Before any work, so that an early SIGTERM is not lost.
		term = make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
	}
	marker := args[1]
	chunk := []byte(strings.Repeat(marker, 1<<20/len(marker)+1)[:1<<20])
	for _, name := range args[2:] {
		if err := write(name, chunk, mib); err != nil {
			fmt.Println("markerwriter:", err)
			os.Exit(1)
		}
		fmt.Printf("wrote %d MiB of marker to %s as uid %d\n", mib, name, os.Getuid())
	}
	if term == nil {
		return
	}
	<-term
	if err := write(*onTerm, []byte(stoppedText), 1); err != nil {
		fmt.Println("markerwriter:", err)
		os.Exit(1)
	}
	fmt.Printf("stopped: wrote %s\n", *onTerm)
}

// write writes chunk n times to a new file and syncs it.
func write(name string, chunk []byte, n int) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	for i := 0; i < n; i++ {
		if _, err := f.Write(chunk); err != nil {
			return err
		}
	}
	return f.Sync()
}
