package qemutests

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// TestServiceIsolation: the front door runs as a process of its own,
// unprivileged and confined; killed with SIGKILL, made to panic, or made
// to call a system call its filter forbids (test hooks compiled only into
// the test image), it comes back and serves again, each restart in status
// and in the audit log, while the node stays up and its volume keeps its
// LUKS UUID.
//
// The same for the management API's process, while a client's connection
// through the front door stays up. The IPsec keying process is broken the
// same way in TestIPsec, which has the peers it needs; the backup rounds
// are still in PID1 (issue 18).
func TestServiceIsolation(t *testing.T) {
	img := testImage(t)
	dir := t.TempDir()
	tlsSection := projectPKI(t, dir, map[string]string{"robot": pki.RoleControlPlane})
	cfg := fmt.Sprintf(`{"version": 1, "hostname": "db-1",
		"network": {"interfaces": [{"name": "eth0", "addresses": ["10.99.0.10/24"]}]},
		"firewall": {"client_ports": [5432], "management_sources": ["10.99.0.5"]},
		"tls": %s,
		"front_door": [{"port": 5432, "protocol": "tls", "backend": "127.0.0.1:5433"}],
		"volumes": [{"name": "data", "serial": "data0", "mount": "/var/lib/data"}],
		"workload": {"command": ["%s/netprobe", "-echo", "127.0.0.1:5433"], "uid": 999, "gid": 999}}`, tlsSection, testBin)
	n := harness.NewNet(t)
	ops := n.AddClient("10.99.0.5/24")
	app := n.AddClient("10.99.0.20/24")
	disk := newDisk(t, dir, "d0", 64<<20)
	vm := harness.Start(t, harness.Options{Name: "isolation", Image: img, Config: []byte(cfg), Net: n, Disks: []string{disk}})
	vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	vm.MustWaitFor(`^bulwark: workload: netprobe: echo server on 127\.0\.0\.1:5433$`, time.Minute)

	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca", "ca.pem"))
	blk, _ := pem.Decode(caPEM)
	caCert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	robot, err := tls.LoadX509KeyPair(filepath.Join(dir, "robot.pem"), filepath.Join(dir, "robot.key"))
	if err != nil {
		t.Fatal(err)
	}
	api := func(method, path, body string, out any) error {
		return ops.Do(func() error {
			hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "10.99.0.10", Certificates: []tls.Certificate{robot}},
				// Dial inside the operator's namespace: the transport
				// dials on threads of its own.
				DialContext: ops.Dial}}
			defer hc.CloseIdleConnections()
			req, _ := http.NewRequest(method, "https://10.99.0.10:9443"+path, strings.NewReader(body))
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode/100 != 2 {
				return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
			}
			if out != nil {
				return json.Unmarshal(b, out)
			}
			return nil
		})
	}
	type svcStatus struct {
		Name       string `json:"name"`
		State      string `json:"state"`
		Pid        int    `json:"pid"`
		UID        string `json:"uid"`
		CapEff     string `json:"cap_eff"`
		NoNewPrivs string `json:"no_new_privs"`
		Seccomp    string `json:"seccomp"`
		Landlock   string `json:"landlock"`
		Restarts   int    `json:"restarts"`
		LastExit   string `json:"last_exit"`
	}
	status := func(name string) (svcStatus, []string) {
		t.Helper()
		var st struct {
			Services []svcStatus `json:"services"`
			Volumes  []string    `json:"volumes"`
		}
		var err error
		// The management API may be the service just broken: retry
		// until its new process answers.
		for deadline := time.Now().Add(time.Minute); ; {
			if err = api("GET", "/v1/status", "", &st); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st.Services {
			if s.Name == name {
				return s, st.Volumes
			}
		}
		t.Fatalf("status lists no %s service: %+v", name, st.Services)
		return svcStatus{}, nil
	}
	// echo connects through the front door and checks the workload echoes.
	echo := func() error {
		return app.Do(func() error {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", "10.99.0.10:5432", &tls.Config{RootCAs: pool, ServerName: "10.99.0.10"})
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := []byte("through the front door's own process")
			if _, err := c.Write(msg); err != nil {
				return err
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil {
				return err
			}
			if !bytes.Equal(got, msg) {
				return fmt.Errorf("echoed %q", got)
			}
			return nil
		})
	}
	// servesWithin retries echo until the restarted front door answers.
	servesWithin := func(d time.Duration) time.Duration {
		t.Helper()
		t0 := time.Now()
		var err error
		for time.Since(t0) < d {
			if err = echo(); err == nil {
				return time.Since(t0)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("the front door did not serve again within %s: %v", d, err)
		return 0
	}

	_, vols := status("frontdoor")
	// The front door's process has PID1's descriptor limit (65,536), so
	// its default limit of 1024 connections fits in its budget.
	var doors struct {
		FrontDoors []struct {
			Port  int `json:"port"`
			Limit int `json:"Limit"`
		} `json:"front_doors"`
	}
	if err := api("GET", "/v1/status", "", &doors); err != nil {
		t.Fatal(err)
	}
	if len(doors.FrontDoors) != 1 || doors.FrontDoors[0].Limit != 1024 {
		t.Errorf("front doors in status: %+v; want port 5432 with its default limit of 1024 connections", doors.FrontDoors)
	}
	for name, uid := range map[string]string{"frontdoor": "61001", "mgmt": "61002"} {
		st, _ := status(name)
		t.Logf("%s: %+v", name, st)
		if st.UID != uid || strings.Trim(st.CapEff, "0") != "" || st.NoNewPrivs != "1" || st.Seccomp != "2" || st.State != "running" {
			t.Errorf("the %s process: uid %s, CapEff %s, NoNewPrivs %s, Seccomp %s, state %s; want %s, none, 1, 2, running",
				name, st.UID, st.CapEff, st.NoNewPrivs, st.Seccomp, st.State, uid)
		}
	}
	if err := echo(); err != nil {
		t.Fatalf("through the front door: %v", err)
	}
	// A client's connection through the front door, held open while the
	// management API's process is broken three times.
	var held *tls.Conn
	if err := app.Do(func() error {
		var err error
		held, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", "10.99.0.10:5432", &tls.Config{RootCAs: pool, ServerName: "10.99.0.10"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldEcho := func() error {
		held.SetDeadline(time.Now().Add(10 * time.Second))
		msg := []byte("still connected")
		if _, err := held.Write(msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		_, err := io.ReadFull(held, got)
		return err
	}
	if err := heldEcho(); err != nil {
		t.Fatal(err)
	}

	for _, name := range []string{"mgmt", "frontdoor"} {
		for i, c := range []struct{ hook, exit string }{
			{"kill", "killed by signal killed"},
			{"panic", "exited with status 2"},
			{"forbidden-syscall", "killed by signal bad system call"},
		} {
			before, _ := status(name)
			var res any
			err := api("POST", "/v1/test/hook", fmt.Sprintf(`{"service": %q, "hook": %q}`, name, c.hook), &res)
			t.Logf("%s hook %s: %v %v", name, c.hook, res, err)
			vm.MustWaitFor(`^bulwark: WARN: service `+name+`: `+c.exit+`; restarting in `, time.Minute)
			t0 := time.Now()
			after, _ := status(name) // retries until the management API answers
			for after.State != "running" && time.Since(t0) < time.Minute {
				time.Sleep(200 * time.Millisecond)
				after, _ = status(name)
			}
			if name == "frontdoor" {
				servesWithin(time.Minute)
			}
			t.Logf("after %s %s: back %s later; %+v", name, c.hook, time.Since(t0).Round(100*time.Millisecond), after)
			if after.Restarts != i+1 || after.Pid == before.Pid || after.Pid == 0 || after.State != "running" {
				t.Errorf("after %s %s: restarts %d (want %d), pid %d (was %d), state %s", name, c.hook, after.Restarts, i+1, after.Pid, before.Pid, after.State)
			}
			if after.NoNewPrivs != "1" || after.Seccomp != "2" || after.UID != before.UID {
				t.Errorf("the restarted %s is not confined: %+v", name, after)
			}
		}
		if name == "mgmt" {
			// The front door's connection did not notice.
			if err := heldEcho(); err != nil {
				t.Errorf("the client's connection through the front door after three management API restarts: %v", err)
			}
		}
	}
	// The node stayed up: PID1, the volume (same LUKS UUID), the audit log.
	_, volsAfter := status("frontdoor")
	if strings.Join(vols, ",") != strings.Join(volsAfter, ",") {
		t.Errorf("the volume changed: %q -> %q", vols, volsAfter)
	}
	var audit bytes.Buffer
	if err := ops.Do(func() error {
		hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "10.99.0.10", Certificates: []tls.Certificate{robot}},
			// Dial inside the operator's namespace: the transport
			// dials on threads of its own.
			DialContext: ops.Dial}}
		resp, err := hc.Get("https://10.99.0.10:9443/v1/audit")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(&audit, resp.Body)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"frontdoor", "mgmt"} {
		if n := strings.Count(audit.String(), `service `+name+` `); n < 3 {
			t.Errorf("the audit log has %d records of %s restarts, want 3", n, name)
		}
	}
	if err := vm.PowerOff(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	assertErased(t, disk)
}
