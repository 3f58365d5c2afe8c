package firewall

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// lab is two network namespaces joined by a veth pair: "server", where the
// firewall and the listeners are, and "client", which holds every source
// address the tests connect from. Nothing leaves these namespaces.
type lab struct {
	t              testing.TB
	server, client string
	serverNS       netns.NsHandle
	clientNS       netns.NsHandle
}

var labSeq int

func newLab(t testing.TB) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the firewall tests need root (network namespaces); make test runs them as root")
	}
	labSeq++
	l := &lab{t: t, server: fmt.Sprintf("bwfw-%d-%d-s", os.Getpid(), labSeq), client: fmt.Sprintf("bwfw-%d-%d-c", os.Getpid(), labSeq)}
	t.Cleanup(l.close)
	l.ip("netns", "add", l.server)
	l.ip("netns", "add", l.client)
	l.ip("link", "add", "s0", "netns", l.server, "type", "veth", "peer", "name", "c0", "netns", l.client)
	// Links up first, then addresses (nodad): addresses added to a link
	// that is still down are set up again, with delays, when it comes up.
	for _, ns := range []string{l.server, l.client} {
		l.ip("-n", ns, "link", "set", "lo", "up")
	}
	l.ip("-n", l.server, "link", "set", "s0", "up")
	l.ip("-n", l.client, "link", "set", "c0", "up")
	// Explicit link-local addresses: neighbour discovery started by the
	// server needs them.
	for _, a := range []string{"fe80::1/64", "10.77.0.1/24", "198.51.100.1/24", "fd77::1/64", "2001:db8:77::1/64"} {
		l.ip("-n", l.server, "addr", "add", a, "dev", "s0", "nodad")
	}
	for _, a := range []string{"fe80::2/64", "10.77.0.2/24", "10.77.0.3/24", "10.77.0.4/24", "10.77.0.5/24", "10.77.0.6/24", "198.51.100.2/24",
		"fd77::2/64", "fd77::3/64", "fd77::5/64", "2001:db8:77::2/64"} {
		l.ip("-n", l.client, "addr", "add", a, "dev", "c0", "nodad")
	}
	var err error
	if l.serverNS, err = netns.GetFromName(l.server); err != nil {
		t.Fatal(err)
	}
	if l.clientNS, err = netns.GetFromName(l.client); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *lab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (l *lab) close() {
	l.serverNS.Close()
	l.clientNS.Close()
	exec.Command("ip", "netns", "del", l.server).Run()
	exec.Command("ip", "netns", "del", l.client).Run()
}

// in runs fn on an OS thread that has entered ns; sockets made there stay
// in ns.
func in(ns netns.NsHandle, fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is discarded afterwards (not unlocked), so that no
		// other goroutine ever runs in the test namespace by accident.
		if err := netns.Set(ns); err != nil {
			panic(err)
		}
		fn()
	}()
	<-done
}

// firewall opens the firewall of the server namespace.
func (l *lab) firewall() *Firewall {
	l.t.Helper()
	fw, err := Open(int(l.serverNS))
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { fw.Close() })
	return fw
}

// listen starts echo listeners on the server's ports (all addresses).
func (l *lab) listen(ports ...int) {
	l.t.Helper()
	for _, p := range ports {
		var ln net.Listener
		var err error
		in(l.serverNS, func() { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", p)) })
		if err != nil {
			l.t.Fatal(err)
		}
		l.t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
	}
}

// outcome of one connection attempt.
const (
	connected = "connected"
	refused   = "refused"
	timedOut  = "timed out"
)

func classify(c net.Conn, err error) string {
	if err == nil {
		c.Close()
		return connected
	}
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return refused
	case errors.As(err, &ne) && ne.Timeout():
		return timedOut
	}
	return "error: " + err.Error()
}

// dial connects from src (an address of ns) to dst:port.
func dial(ns netns.NsHandle, src, dst string, port int, timeout time.Duration) string {
	var res string
	in(ns, func() {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		res = classify(d.Dial("tcp", net.JoinHostPort(dst, fmt.Sprint(port))))
	})
	return res
}

// ruleset is `nft list ruleset` in the server namespace.
func (l *lab) ruleset() string {
	l.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", l.server, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		l.t.Fatalf("nft list ruleset: %v\n%s", err, out)
	}
	return string(out)
}

func listenTCP(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

func dialFrom(src, dst string) (net.Conn, error) {
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return d.Dial("tcp", dst)
}
