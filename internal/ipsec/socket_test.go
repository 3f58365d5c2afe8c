package ipsec

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Two network namespaces joined by a veth pair, each with the SPD of a
// node whose peer is the other (ESP required both ways, no SAs yet): the
// keying sockets (bypassListen on the listener, bypassDial on the dialer)
// connect and exchange data in plaintext; nothing else does, whatever its
// ports, not even a keying socket connected to another port of the peer
// (the socket the keying process gets from PID1 is not yet connected).
func TestKeyingSocketBypass(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces); make test runs it as root")
	}
	a, b := fmt.Sprintf("bwipsec-%d-a", os.Getpid()), fmt.Sprintf("bwipsec-%d-b", os.Getpid())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", a).Run(); exec.Command("ip", "netns", "del", b).Run() })
	ip("netns", "add", a)
	ip("netns", "add", b)
	ip("link", "add", "va", "netns", a, "type", "veth", "peer", "name", "vb", "netns", b)
	ip("-n", a, "link", "set", "va", "up")
	ip("-n", b, "link", "set", "vb", "up")
	ip("-n", a, "addr", "add", "10.88.0.1/24", "dev", "va")
	ip("-n", b, "addr", "add", "10.88.0.2/24", "dev", "vb")
	addrA, addrB := netip.MustParseAddr("10.88.0.1"), netip.MustParseAddr("10.88.0.2")

	in := func(ns string, fn func() error) error {
		ch := make(chan error, 1)
		go func() {
			// The thread stays locked and is discarded: it never
			// returns to the runtime in the wrong namespace.
			runtime.LockOSThread()
			h, err := netns.GetFromName(ns)
			if err != nil {
				ch <- err
				return
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				ch <- err
				return
			}
			ch <- fn()
		}()
		return <-ch
	}
	for _, n := range []struct {
		ns         string
		self, peer netip.Addr
	}{{a, addrA, addrB}, {b, addrB, addrA}} {
		if err := in(n.ns, func() error { return installPolicies(policies(n.self, n.peer, 0, 1000)) }); err != nil {
			t.Fatal(err)
		}
	}

	var keyLn, plainLn net.Listener
	if err := in(a, func() error {
		var err error
		lc := net.ListenConfig{Control: bypassListen(7443)}
		if keyLn, err = lc.Listen(context.Background(), "tcp", "10.88.0.1:7443"); err != nil {
			return err
		}
		// Port 5433 accepts plaintext on a's side (a socket policy with
		// an empty selector, as the keying sockets had before): only
		// what b lets out decides.
		open := net.ListenConfig{Control: bypassAll}
		plainLn, err = open.Listen(context.Background(), "tcp", "10.88.0.1:5433")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer keyLn.Close()
	defer plainLn.Close()
	for _, ln := range []net.Listener{keyLn, plainLn} {
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
	// echo dials from b, optionally from a fixed source port and with the
	// keying sockets' bypass, and reports whether data came back.
	echo := func(to string, srcPort int, bypass bool) error {
		return in(b, func() error {
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: addrB.AsSlice(), Port: srcPort}}
			d.Control = func(network, address string, c syscall.RawConn) error {
				c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
				if bypass {
					return bypassDial(addrA, 7443)(network, address, c)
				}
				return nil
			}
			c, err := d.Dial("tcp", to)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Write([]byte("ping")); err != nil {
				return err
			}
			buf := make([]byte, 4)
			_, err = io.ReadFull(c, buf)
			return err
		})
	}
	if err := echo("10.88.0.1:7443", 0, true); err != nil {
		t.Errorf("keying socket to keying listener: %v; want a plaintext exchange", err)
	}
	for _, c := range []struct {
		to      string
		srcPort int
		bypass  bool
		what    string
	}{
		{"10.88.0.1:5433", 7443, false, "from source port 7443 to the peer port"},
		{"10.88.0.1:5433", 0, true, "a keying socket for the peer's keying port, connected to another of its ports"},
		{"10.88.0.1:7443", 0, false, "an ordinary socket to the keying port"},
	} {
		if err := echo(c.to, c.srcPort, c.bypass); err == nil {
			t.Errorf("%s: a plaintext exchange; want it dropped", c.what)
		} else {
			t.Logf("%s: %v", c.what, err)
		}
	}
	// The SPD holds no bypass that names the keying port.
	if err := in(a, func() error {
		ps, err := netlink.XfrmPolicyList(netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, p := range ps {
			// (The kernel lists the sockets' own policies too, as
			// "socket in/out"; those are the bypass, on the keying
			// sockets alone.)
			sock := p.Dir == netlink.XFRM_SOCKET_IN || p.Dir == netlink.XFRM_SOCKET_OUT
			if !sock && len(p.Tmpls) == 0 && (p.SrcPort == 7443 || p.DstPort == 7443) {
				t.Errorf("an SPD bypass of the keying port: %+v", p)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// bypassAll is the keying sockets' old policy, an empty selector: the
// whole socket bypasses ESP, whatever it connects to.
func bypassAll(network, _ string, c syscall.RawConn) error {
	level, opt, family := unix.IPPROTO_IP, unix.IP_XFRM_POLICY, uint16(unix.AF_INET)
	if network == "tcp6" {
		level, opt, family = unix.IPPROTO_IPV6, unix.IPV6_XFRM_POLICY, unix.AF_INET6
	}
	var serr error
	c.Control(func(fd uintptr) {
		for _, dir := range []uint8{uint8(netlink.XFRM_DIR_IN), uint8(netlink.XFRM_DIR_OUT)} {
			p := bypassPolicy(nl.XfrmSelector{Family: family}, dir)
			if err := unix.SetsockoptString(int(fd), level, opt, string(p.Serialize())); err != nil {
				serr = err
			}
		}
	})
	return serr
}
