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
	sink := flag.String("sink", "", "host:port to accept streams on, counting what arrives")
	stream := flag.String("stream", "", "host:port to stream the marker to")
	marker := flag.String("marker", "MARKER", "what the stream repeats")
	seconds := flag.Int("seconds", 30, "how long the stream runs")
	pause := flag.Duration("pause", 2*time.Millisecond, "pause between 4 KiB writes of the stream (0: as fast as possible)")
	flag.Parse()
	if *sink != "" {
		ln, err := net.Listen("tcp", *sink)
		if err != nil {
			fmt.Println("netprobe: sink", err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					n, err := io.Copy(io.Discard, c)
					fmt.Printf("netprobe: sink received %d bytes from %s (%v)\n", n, c.RemoteAddr(), err)
					c.Close()
				}()
			}
		}()
		fmt.Printf("netprobe: sink on %s\n", *sink)
	}
	if *stream != "" {
		go runStream(*stream, *marker, time.Duration(*seconds)*time.Second, *pause)
	}
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

// runStream connects (retrying until the peer's SAs are up) and writes the
// marker for the given time, then reports what it sent and every error.
func runStream(addr, marker string, d, pause time.Duration) {
	var c net.Conn
	var err error
	for i := 0; i < 120; i++ {
		if c, err = net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		fmt.Printf("netprobe: stream to %s: no connection: %v\n", addr, err)
		return
	}
	fmt.Printf("netprobe: stream to %s: connected\n", addr)
	chunk := []byte(strings.Repeat(marker, 4096/len(marker)+1)[:4096])
	var sent int64
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Write(chunk)
		sent += int64(n)
		if err != nil {
			fmt.Printf("netprobe: stream to %s: error after %d bytes: %v\n", addr, sent, err)
			return
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	c.Close()
	fmt.Printf("netprobe: stream to %s: done, %d bytes sent, no errors, %.1f MiB/s\n", addr, sent, float64(sent)/(1<<20)/d.Seconds())
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
