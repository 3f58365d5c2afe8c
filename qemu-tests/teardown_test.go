package qemutests

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/backup"
	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// TestTeardownBound: a client holds a connection open through the front
// door (the workload never answers it, like a query that does not end)
// and a backup round runs a command that ignores SIGTERM. After the power
// button the node still erases both volumes and powers off within its
// bound, and says which teardown steps it cut short.
func TestTeardownBound(t *testing.T) {
	img := testImage(t)
	ctlBin := buildCtl(t)
	dir := t.TempDir()
	svc, err := backup.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, _ := backup.PublicKeyPEM(&svc.PublicKey)
	pub, _ := json.Marshal(string(pubPEM))
	tlsSection := projectPKI(t, dir, map[string]string{"robot": pki.RoleControlPlane})
	cfg := fmt.Sprintf(`{"version": 1, "hostname": "db-1",
		"network": {"interfaces": [{"name": "eth0", "addresses": ["10.99.0.10/24"]}]},
		"firewall": {"client_ports": [5432], "management_sources": ["10.99.0.5"]},
		"tls": %s,
		"front_door": [{"port": 5432, "protocol": "tls", "backend": "127.0.0.1:5433"}],
		"volumes": [{"name": "data", "serial": "data0", "mount": "/var/lib/data"},
			{"name": "wal", "serial": "data1", "mount": "/var/lib/wal"}],
		"workload": {"command": ["%[2]s/netprobe", "-hold", "127.0.0.1:5433"], "uid": 999, "gid": 999},
		"backup": {"region": "eu-north-1", "public_key": %[3]s, "store": {"dir": "/var/lib/wal/backups"},
			"sources": [{"kind": "command", "command": ["%[2]s/stubborn"]}]}}`, tlsSection, testBin, pub)

	n := harness.NewNet(t)
	ops := n.AddClient("10.99.0.5/24")
	app := n.AddClient("10.99.0.20/24")
	disks := []string{newDisk(t, dir, "d0", 64<<20), newDisk(t, dir, "d1", 64<<20)}
	vm := harness.Start(t, harness.Options{Name: "teardown", Image: img, Config: []byte(cfg), Net: n, Disks: disks})
	vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	vm.MustWaitFor(`^bulwark: workload: netprobe: holding connections on 127\.0\.0\.1:5433$`, time.Minute)

	// The client's connection, held open by the workload.
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca", "ca.pem"))
	blk, _ := pem.Decode(caPEM)
	caCert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	var held *tls.Conn
	if err := app.Do(func() error {
		var err error
		held, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", "10.99.0.10:5432", &tls.Config{RootCAs: pool, ServerName: "10.99.0.10"})
		if err == nil {
			_, err = held.Write([]byte("SELECT pg_sleep(3600);"))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	vm.MustWaitFor(`^bulwark: workload: netprobe: holding a connection from 127\.0\.0\.1:\d+ \(1 held\)$`, time.Minute)

	// A backup round whose command ignores SIGTERM and never ends.
	op := operator{t: t, from: ops, bin: ctlBin, dir: dir, caFile: filepath.Join(dir, "ca", "ca.pem")}
	if out, code := op.run("robot", "backup", "start"); code != 0 {
		t.Fatalf("backup start: exit %d\n%s", code, out)
	}
	vm.MustWaitFor(`^bulwark: backup command: stubborn: wrote 4096 bytes; now ignoring SIGTERM and sleeping$`, time.Minute)

	t0 := time.Now()
	if err := vm.PowerButton(); err != nil {
		t.Fatal(err)
	}
	// The bound is 60 s from the shutdown request; the margin is for the
	// power-off itself under emulation.
	if err := vm.WaitExit(90 * time.Second); err != nil {
		t.Fatalf("the node did not power off within 90 s of the power button: %v", err)
	}
	took := time.Since(t0)
	t.Logf("powered off %s after the power button", took.Round(100*time.Millisecond))

	console := vm.Console()
	for _, want := range []string{
		`bulwark: teardown step="stop service frontdoor"`,
		`bulwark: ERROR: teardown step cut short step="stop backups"`,
		`bulwark: teardown step="crypto-erase volume data"`,
		`bulwark: teardown step="crypto-erase volume wal"`,
		`bulwark: ERROR: powering off after failed teardown steps cut_short="stop backups"`,
	} {
		if !strings.Contains(console, want) {
			t.Errorf("the console lacks %q", want)
		}
	}
	if strings.Contains(console, "bulwark: powered off cleanly") {
		t.Error("the node says it powered off cleanly after cutting a step short")
	}
	for _, d := range disks {
		assertErased(t, d)
	}
	// The client's connection was closed by the node, not left hanging.
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(held); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Error("the client's connection was never closed")
		}
	}
}
