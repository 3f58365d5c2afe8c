package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
)

// nsPrefix names every namespace the harness creates; the pid that follows
// lets a later run remove namespaces whose creator died without cleaning up.
const nsPrefix = "bwt"

var seq atomic.Int64

// Net is a test network: a bridge inside a network namespace that the test
// owns. VMs' tap devices and test clients' veth ends join the bridge.
// Nothing in it is connected to the host's network.
type Net struct {
	t      T
	NS     string
	Bridge string
}

// NewNet creates a namespace with a bridge. It is removed, with everything
// in it, when the test ends.
func NewNet(t T) *Net {
	t.Helper()
	sweepStale()
	n := &Net{t: t, NS: fmt.Sprintf("%s-%d-%d", nsPrefix, os.Getpid(), seq.Add(1)), Bridge: "br0"}
	mustRun(t, "ip", "netns", "add", n.NS)
	addCleanup(t, func() { run("ip", "netns", "del", n.NS) })
	mustRun(t, "ip", "-n", n.NS, "link", "set", "lo", "up")
	mustRun(t, "ip", "-n", n.NS, "link", "add", n.Bridge, "type", "bridge")
	// No STP forwarding delay: ports forward as soon as they are up.
	mustRun(t, "ip", "-n", n.NS, "link", "set", n.Bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
	mustRun(t, "ip", "-n", n.NS, "link", "set", n.Bridge, "up")
	return n
}

// tap creates a tap device on the bridge for a VM's NIC.
func (n *Net) tap() string {
	name := fmt.Sprintf("tap%d", seq.Add(1))
	mustRun(n.t, "ip", "-n", n.NS, "tuntap", "add", name, "mode", "tap")
	mustRun(n.t, "ip", "-n", n.NS, "link", "set", name, "master", n.Bridge, "up")
	return name
}

// Client is a test host on the bridge, in a namespace of its own, with the
// source addresses the test chose.
type Client struct {
	NS    string
	Addrs []string
}

// AddClient adds a test host with the given addresses (CIDR notation).
func (n *Net) AddClient(addrs ...string) *Client {
	n.t.Helper()
	id := seq.Add(1)
	c := &Client{NS: fmt.Sprintf("%s-c%d", n.NS, id), Addrs: addrs}
	mustRun(n.t, "ip", "netns", "add", c.NS)
	addCleanup(n.t, func() { run("ip", "netns", "del", c.NS) })
	host := fmt.Sprintf("vc%d", id)
	mustRun(n.t, "ip", "-n", n.NS, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", c.NS)
	mustRun(n.t, "ip", "-n", n.NS, "link", "set", host, "master", n.Bridge, "up")
	mustRun(n.t, "ip", "-n", c.NS, "link", "set", "lo", "up")
	// Up first, then the addresses: addresses added to a link that is
	// down are set up again, with delays, when it comes up.
	mustRun(n.t, "ip", "-n", c.NS, "link", "set", "eth0", "up")
	for _, a := range addrs {
		args := []string{"-n", c.NS, "addr", "add", a, "dev", "eth0"}
		if strings.Contains(a, ":") {
			args = append(args, "nodad")
		}
		mustRun(n.t, "ip", args...)
	}
	return c
}

// Command returns a command that runs inside the client's namespace.
func (c *Client) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.NS, name}, args...)...)
}

// Do runs fn on an OS thread inside the client's namespace; sockets fn
// makes stay in the namespace. The thread is left locked and so discarded
// when fn returns: it is never reused in the wrong namespace.
func (c *Client) Do(fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		target, err := netns.GetFromName(c.NS)
		if err != nil {
			ch <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- err
			return
		}
		ch <- fn()
	}()
	return <-ch
}

// Dial connects from inside the client's namespace.
func (c *Client) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := c.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Listen listens inside the client's namespace; the listener is closed
// when the test ends.
func (c *Client) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := c.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// Scan tries a TCP connection from the client to every port of host and
// returns the ports that accepted, in order. workers connections are in
// flight at once; a port that does not answer within timeout counts as
// not open.
func (c *Client) Scan(host string, ports []int, workers int, timeout time.Duration) ([]int, error) {
	jobs := make(chan int)
	var mu sync.Mutex
	var open []int
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		go func() {
			errs <- c.Do(func() error {
				d := net.Dialer{Timeout: timeout}
				for p := range jobs {
					conn, err := d.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
					if err == nil {
						conn.Close()
						mu.Lock()
						open = append(open, p)
						mu.Unlock()
					}
				}
				return nil
			})
		}()
	}
	for _, p := range ports {
		jobs <- p
	}
	close(jobs)
	var first error
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	sort.Ints(open)
	return open, first
}

// sweepStale removes namespaces left by harness processes that are gone
// (killed before their cleanup ran).
func sweepStale() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		f := strings.SplitN(e.Name(), "-", 3)
		if len(f) < 3 || f[0] != nsPrefix {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", f[1])); err == nil {
			continue
		}
		run("ip", "netns", "del", e.Name())
	}
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func mustRun(t T, name string, args ...string) {
	t.Helper()
	if err := run(name, args...); err != nil {
		t.Fatal(err)
	}
}
