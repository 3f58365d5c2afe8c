// Command markerwriter is the test workload of the volume tests: it fills
// files with a known marker, syncs them, and reports. The host then looks
// for the marker in the raw disk files and must not find it.
//
//	markerwriter MIB MARKER FILE...
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Println("usage: markerwriter MIB MARKER FILE...")
		os.Exit(2)
	}
	mib, err := strconv.Atoi(os.Args[1])
	if err != nil || mib < 1 || os.Args[2] == "" {
		fmt.Println("markerwriter: bad size or empty marker")
		os.Exit(2)
	}
	marker := os.Args[2]
	chunk := []byte(strings.Repeat(marker, 1<<20/len(marker)+1)[:1<<20])
	for _, name := range os.Args[3:] {
		if err := write(name, chunk, mib); err != nil {
			fmt.Println("markerwriter:", err)
			os.Exit(1)
		}
		fmt.Printf("wrote %d MiB of marker to %s as uid %d\n", mib, name, os.Getuid())
	}
}

func write(name string, chunk []byte, mib int) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	for i := 0; i < mib; i++ {
		if _, err := f.Write(chunk); err != nil {
			return err
		}
	}
	return f.Sync()
}
