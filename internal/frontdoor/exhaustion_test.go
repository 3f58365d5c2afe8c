package frontdoor

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/mgmt"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

// TestMain runs the flooder of TestFrontDoorExhaustion when the test
// binary is started as one (in its own process, so that its sockets do
// not count against the server's descriptors).
func TestMain(m *testing.M) {
	if target := os.Getenv("BULWARK_FLOOD_TARGET"); target != "" {
		os.Exit(flood(target))
	}
	os.Exit(m.Run())
}

// flood holds floodPerSource connections open from each of the sources
// in BULWARK_FLOOD_SOURCES to target, opening a new one whenever the
// server closes one, for BULWARK_FLOOD_SECONDS; it sends nothing, as a
// slow-loris client does.
func flood(target string) int {
	var rl unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &rl)
	rl.Cur = rl.Max // 200 sources x 64 connections need 12,800
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Println("flooder: rlimit:", err)
		return 1
	}
	secs, _ := strconv.Atoi(os.Getenv("BULWARK_FLOOD_SECONDS"))
	end := time.Now().Add(time.Duration(secs) * time.Second)
	var opened atomic.Int64
	var wg sync.WaitGroup
	for _, src := range strings.Split(os.Getenv("BULWARK_FLOOD_SOURCES"), ",") {
		for i := 0; i < floodPerSource; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
				for time.Now().Before(end) {
					c, err := d.Dial("tcp", target)
					if err != nil {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					opened.Add(1)
					c.SetReadDeadline(end)
					io.Copy(io.Discard, c) // until the server closes it
					c.Close()
				}
			}()
		}
	}
	wg.Wait()
	fmt.Printf("flooder: %d connections opened\n", opened.Load())
	return 0
}

const floodPerSource = 64 // the default per-source limit

type quietNode struct{}

func (quietNode) Status() any                           { return map[string]string{"state": "up"} }
func (quietNode) Allowlist() []string                   { return nil }
func (quietNode) SetAllowlist([]string) (string, error) { return "", nil }
func (quietNode) Backup() error                         { return mgmt.ErrNotAvailable }
func (quietNode) Rekey() error                          { return mgmt.ErrNotAvailable }
func (quietNode) Attest([]byte) (any, error)            { return nil, mgmt.ErrNotAvailable }
func (quietNode) Shutdown(string)                       {}

// TestFrontDoorExhaustion: 200 sources each hold as many connections to
// the front door as the per-source limit allows, in a process whose
// descriptor limit is 1024, with the front door's default limits. The
// front door refuses what is over its global limit, and the management API
// in the same process still answers, every call still audited in the
// log's file.
func TestFrontDoorExhaustion(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces); make test runs it as root")
	}
	srvNS, cliNS := fmt.Sprintf("bwfd-%d-s", os.Getpid()), fmt.Sprintf("bwfd-%d-c", os.Getpid())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", srvNS).Run()
		exec.Command("ip", "netns", "del", cliNS).Run()
	})
	ip("netns", "add", srvNS)
	ip("netns", "add", cliNS)
	ip("link", "add", "s0", "netns", srvNS, "type", "veth", "peer", "name", "c0", "netns", cliNS)
	ip("-n", srvNS, "link", "set", "s0", "up")
	ip("-n", cliNS, "link", "set", "c0", "up")
	ip("-n", srvNS, "addr", "add", "10.66.0.1/16", "dev", "s0")
	ip("-n", cliNS, "addr", "add", "10.66.2.1/16", "dev", "c0") // the operator
	var sources []string
	for i := 1; i <= 200; i++ {
		a := fmt.Sprintf("10.66.1.%d", i)
		sources = append(sources, a)
		ip("-n", cliNS, "addr", "add", a+"/16", "dev", "c0")
	}
	in := func(ns string, fn func() error) error {
		ch := make(chan error, 1)
		go func() {
			// Locked and never unlocked: the thread is discarded and
			// never runs other goroutines in the wrong namespace.
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

	// The node: PID1 before the fix had the kernel's limit for init
	// raised to its hard limit, 4096; 1024 here makes the same point with
	// a quarter of the connections.
	var saved unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 1024, Max: saved.Max}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &saved) })

	f := newFixture(t)
	dir := t.TempDir()
	robot, err := f.ca.IssueClient("robot", pki.RoleControlPlane, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	log := audit.New(nil)
	logFile := filepath.Join(dir, "audit.log")
	if err := log.Attach(logFile); err != nil {
		t.Fatal(err)
	}
	var door *Server
	var api *mgmt.Server
	if err := in(srvNS, func() error {
		var err error
		door, err = Listen(Options{Addr: "10.66.0.1:5432", Protocol: Postgres, Backend: f.backend,
			TLS: &tls.Config{Certificates: []tls.Certificate{f.server}}})
		if err != nil {
			return err
		}
		api, err = mgmt.Listen(mgmt.Options{Addr: "10.66.0.1:9443", CA: f.ca.Cert, Cert: f.server, Audit: log, Node: quietNode{}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- door.Serve() }()
	go func() { serveErr <- api.Serve() }()
	defer door.Close()
	defer api.Close()

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fl := exec.Command("ip", "netns", "exec", cliNS, self)
	fl.Env = append(os.Environ(), "BULWARK_FLOOD_TARGET=10.66.0.1:5432", "BULWARK_FLOOD_SOURCES="+strings.Join(sources, ","), "BULWARK_FLOOD_SECONDS=25")
	var flOut strings.Builder
	fl.Stdout, fl.Stderr = &flOut, &flOut
	if err := fl.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { fl.Process.Kill(); fl.Wait() }()

	// The operator's calls while the flood runs.
	client := func() error {
		cert, err := tls.X509KeyPair(robot.CertPEM, robot.KeyPEM)
		if err != nil {
			return err
		}
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: f.pool, ServerName: "db.test", Certificates: []tls.Certificate{cert}},
			// Each socket is made on a thread in the client's namespace.
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := in(cliNS, func() error {
					var err error
					c, err = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("10.66.2.1")}}).DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		}}
		time.Sleep(8 * time.Second) // the flood at its height
		var failures []string
		for i := 0; i < 10; i++ {
			resp, err := hc.Get("https://10.66.0.1:9443/v1/status")
			if err != nil {
				failures = append(failures, err.Error())
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failures = append(failures, resp.Status)
				}
			}
			time.Sleep(500 * time.Millisecond)
		}
		hc.CloseIdleConnections()
		if len(failures) > 0 {
			return fmt.Errorf("%d of 10 management calls during the flood failed: %s", len(failures), strings.Join(failures, "; "))
		}
		return nil
	}
	if err := client(); err != nil {
		t.Error(err)
	}
	st := door.Stats()
	t.Logf("front door during the flood: %+v", st)
	select {
	case err := <-serveErr:
		t.Errorf("a server stopped during the flood: %v", err)
	default:
	}
	if st.OverLimit == 0 {
		t.Errorf("no connection was refused over the global limit (%d): the flood did not reach it", st.Limit)
	}
	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), `"what":"GET /v1/status"`); n < 10 {
		t.Errorf("the audit log's file holds %d records of the 10 status calls", n)
	}
	fl.Process.Kill()
	fl.Wait()
	if s := strings.TrimSpace(flOut.String()); s != "" {
		t.Log(s)
	}
}
