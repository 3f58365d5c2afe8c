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
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	listen := flag.String("listen", "", "comma-separated TCP ports to listen on")
	connect := flag.String("connect", "", "comma-separated host:port to connect to")
	echo := flag.String("echo", "", "host:port of an echo server (a stand-in workload behind the front door)")
	sink := flag.String("sink", "", "host:port to accept streams on, counting what arrives")
	hold := flag.String("hold", "", "host:port to accept connections on and hold open, never reading or closing them (a query that does not end)")
	stream := flag.String("stream", "", "host:port to stream the marker to")
	marker := flag.String("marker", "MARKER", "what the stream repeats")
	seconds := flag.Int("seconds", 30, "how long the stream runs")
	pause := flag.Duration("pause", 2*time.Millisecond, "pause between 4 KiB writes of the stream (0: as fast as possible)")
	ping := flag.String("ping", "", "IPv4 address to send an ICMP echo request to every 100 ms while the stream runs")
	flag.Parse()
	if *sink != "" {
		serve("sink", *sink, func(c net.Conn) {
			n, err := io.Copy(io.Discard, c)
			fmt.Printf("netprobe: sink received %d bytes from %s (%v)\n", n, c.RemoteAddr(), err)
		})
		fmt.Printf("netprobe: sink on %s\n", *sink)
	}
	if *hold != "" {
		holdOn(*hold)
		fmt.Printf("netprobe: holding connections on %s\n", *hold)
	}
	if *stream != "" {
		go runStream(*stream, *marker, time.Duration(*seconds)*time.Second, *pause)
	}
	if *ping != "" {
		go runPing(*ping, time.Duration(*seconds)*time.Second)
	}
	if *echo != "" {
		serve("echo", *echo, func(c net.Conn) { io.Copy(c, c) })
		fmt.Printf("netprobe: echo server on %s\n", *echo)
	}
	for _, p := range split(*listen) {
		serve("listen", ":"+p, func(net.Conn) {})
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

// serve listens on addr (exiting if it cannot) and runs handle for each
// connection, closing it afterwards.
func serve(what, addr string, handle func(net.Conn)) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Println("netprobe:", what, addr, err)
		os.Exit(1)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { handle(c); c.Close() }()
		}
	}()
}

// holdOn accepts connections and keeps every one open, unread, for the
// life of the process.
func holdOn(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Println("netprobe: hold", addr, err)
		os.Exit(1)
	}
	go func() {
		var held []net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
			fmt.Printf("netprobe: holding a connection from %s (%d held)\n", c.RemoteAddr(), len(held))
		}
	}()
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// runPing sends an ICMP echo request every 200 ms through an unprivileged
// ping socket (the init lets the workload's group open one), from the
// first answered request on for the given time, and reports how many of
// those were answered (late answers count; a final two seconds are waited
// for).
func runPing(addr string, d time.Duration) {
	ip := net.ParseIP(addr).To4()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		fmt.Printf("netprobe: ping %s: %v\n", addr, err)
		return
	}
	defer unix.Close(fd)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	to := &unix.SockaddrInet4{}
	copy(to.Addr[:], ip)
	var mu sync.Mutex
	answered := map[int]bool{}
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 1500)
		for {
			select {
			case <-done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err == nil && n >= 8 && buf[0] == 0 {
				mu.Lock()
				answered[int(buf[6])<<8|int(buf[7])] = true
				mu.Unlock()
			}
		}
	}()
	first := 0
	for seq := 1; seq < 3000 && first == 0; seq++ {
		unix.Sendto(fd, []byte{8, 0, 0, 0, 0, 0, byte(seq >> 8), byte(seq), 'b', 'w'}, 0, to)
		time.Sleep(200 * time.Millisecond)
		mu.Lock()
		if answered[seq] {
			first = seq + 1
		}
		mu.Unlock()
	}
	if first == 0 {
		fmt.Printf("netprobe: ping %s: never answered\n", addr)
		close(done)
		return
	}
	fmt.Printf("netprobe: ping %s: answered, counting\n", addr)
	last := first
	for end := time.Now().Add(d); time.Now().Before(end); last++ {
		unix.Sendto(fd, []byte{8, 0, 0, 0, 0, 0, byte(last >> 8), byte(last), 'b', 'w'}, 0, to)
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	close(done)
	mu.Lock()
	got := 0
	for seq := first; seq < last; seq++ {
		if answered[seq&0xffff] {
			got++
		}
	}
	mu.Unlock()
	fmt.Printf("netprobe: ping %s: %d sent, %d answered, %d lost\n", addr, last-first, got, last-first-got)
}
