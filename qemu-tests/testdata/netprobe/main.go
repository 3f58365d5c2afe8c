// Command netprobe is the test workload of the firewall tests: it listens
// on the TCP ports it is given (so that the host can see which ones the
// firewall lets through) and tries the outbound connections it is given,
// reporting each as connected, refused or timed out.
//
//	netprobe -listen 5432,8080 -connect 10.0.0.5:443,10.0.0.6:443 -echo 127.0.0.1:5433
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "", "comma-separated TCP ports to listen on")
	connect := flag.String("connect", "", "comma-separated host:port to connect to")
	echo := flag.String("echo", "", "host:port of an echo server (a stand-in workload behind the front door)")
	flag.Parse()
	if *echo != "" {
		ln, err := net.Listen("tcp", *echo)
		if err != nil {
			fmt.Println("netprobe: echo", err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
		fmt.Printf("netprobe: echo server on %s\n", *echo)
	}
	for _, p := range split(*listen) {
		ln, err := net.Listen("tcp", ":"+p)
		if err != nil {
			fmt.Println("netprobe: listen", p, err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	fmt.Printf("netprobe: listening on %s\n", *listen)
	for _, addr := range split(*connect) {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		var ne net.Error
		switch {
		case err == nil:
			c.Close()
			fmt.Printf("netprobe: outbound %s: connected\n", addr)
		case errors.Is(err, syscall.ECONNREFUSED):
			fmt.Printf("netprobe: outbound %s: refused\n", addr)
		case errors.As(err, &ne) && ne.Timeout():
			fmt.Printf("netprobe: outbound %s: timed out\n", addr)
		default:
			fmt.Printf("netprobe: outbound %s: %v\n", addr, err)
		}
	}
	select {}
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
