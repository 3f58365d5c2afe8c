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
// So far the front door is the only service out of PID1: the management
// API, the IPsec keying and the backup rounds follow (issue 18).
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
	status := func() (svcStatus, []string) {
		t.Helper()
		var st struct {
			Services []svcStatus `json:"services"`
			Volumes  []string    `json:"volumes"`
		}
		if err := api("GET", "/v1/status", "", &st); err != nil {
			t.Fatal(err)
		}
		for _, s := range st.Services {
			if s.Name == "frontdoor" {
				return s, st.Volumes
			}
		}
		t.Fatalf("status lists no frontdoor service: %+v", st.Services)
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

	first, vols := status()
	t.Logf("front door: %+v", first)
	if first.UID != "61001" || strings.Trim(first.CapEff, "0") != "" || first.NoNewPrivs != "1" || first.Seccomp != "2" || first.State != "running" {
		t.Errorf("the front door's process: uid %s, CapEff %s, NoNewPrivs %s, Seccomp %s, state %s; want 61001, none, 1, 2, running",
			first.UID, first.CapEff, first.NoNewPrivs, first.Seccomp, first.State)
	}
	if err := echo(); err != nil {
		t.Fatalf("through the front door: %v", err)
	}

	for i, c := range []struct{ hook, exit string }{
		{"kill", "killed by signal killed"},
		{"panic", "exited with status 2"},
		{"forbidden-syscall", "killed by signal bad system call"},
	} {
		before, _ := status()
		var res any
		err := api("POST", "/v1/test/hook", fmt.Sprintf(`{"service": "frontdoor", "hook": %q}`, c.hook), &res)
		t.Logf("hook %s: %v %v", c.hook, res, err)
		vm.MustWaitFor(`^bulwark: WARN: service frontdoor: `+c.exit+`; restarting in `, time.Minute)
		took := servesWithin(time.Minute)
		after, _ := status()
		t.Logf("after %s: serving again %s later; %+v", c.hook, took.Round(100*time.Millisecond), after)
		if after.Restarts != i+1 || after.Pid == before.Pid || after.Pid == 0 {
			t.Errorf("after %s: restarts %d (want %d), pid %d (was %d)", c.hook, after.Restarts, i+1, after.Pid, before.Pid)
		}
		if after.NoNewPrivs != "1" || after.Seccomp != "2" || after.UID != "61001" {
			t.Errorf("the restarted front door is not confined: %+v", after)
		}
	}
	// The node stayed up: PID1, the volume (same LUKS UUID), the audit log.
	_, volsAfter := status()
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
	if n := strings.Count(audit.String(), `service frontdoor `); n < 3 {
		t.Errorf("the audit log has %d records of front-door restarts, want 3", n)
	}
	if err := vm.PowerOff(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	assertErased(t, disk)
}
