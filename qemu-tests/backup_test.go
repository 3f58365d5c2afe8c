package qemutests

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/backup"
	"github.com/bulwarkvm/bulwark/internal/objstore/miniotest"
	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// TestBackup: a node writes data into its encrypted volume and, on a
// management API request, backs it up to MinIO on the test bridge; the
// host restores it with the private key to identical bytes. A dump of the
// node's memory holds the public key and no trace of the private key, and
// the front door's and the management API's processes hold no volume key
// and no S3 secret. At
// power-off the node takes a final backup after its workload has stopped
// and before its volume is erased. A node whose bucket is in another
// region refuses it and halts.
func TestBackup(t *testing.T) {
	img := testImage(t)
	ctlBin := buildCtl(t)
	dir := t.TempDir()

	svc, err := backup.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	privPEM, _ := backup.PrivateKeyPEM(svc)
	pubPEM, _ := backup.PublicKeyPEM(&svc.PublicKey)
	keyFile := filepath.Join(dir, "svc.key")
	os.WriteFile(keyFile, privPEM, 0o600)

	tlsSection := projectPKI(t, dir, map[string]string{"robot": pki.RoleControlPlane})

	n := harness.NewNet(t)
	ops := n.AddClient("10.99.0.5/24")
	s3host := n.AddClient("10.99.0.40/24")
	srv := miniotest.Start(t, miniotest.Options{Addr: "10.99.0.40:9000", Region: "eu-north-1", Netns: s3host.NS, Dial: s3host.Dial})
	srv.MakeBucket(t, "backups")

	mark := make([]byte, 12)
	rand.Read(mark)
	marker := "BULWARK-BACKUP-" + hex.EncodeToString(mark) + "-"
	config := func(region string) []byte {
		key, _ := json.Marshal(string(pubPEM))
		return []byte(fmt.Sprintf(`{"version": 1, "hostname": "db-1",
		"network": {"interfaces": [{"name": "eth0", "addresses": ["10.99.0.10/24"]}]},
		"firewall": {"client_ports": [5432], "management_sources": ["10.99.0.5"], "egress": {"backup": [{"address": "10.99.0.40", "port": 9000}]}},
		"tls": %s,
		"front_door": [{"port": 5432, "protocol": "tls", "backend": "127.0.0.1:5433"}],
		"volumes": [{"name": "data", "serial": "data0", "mount": "/var/lib/data"}],
		"workload": {"command": ["%s/markerwriter", "-on-term", "/var/lib/data/stopped", "4", "%s", "/var/lib/data/marker"], "uid": 999, "gid": 999},
		"backup": {"region": %q, "public_key": %s, "segment_mib": 1, "final_on_shutdown": true,
			"store": {"s3": {"endpoint": "http://10.99.0.40:9000", "allow_http": true, "bucket": "backups", "prefix": "svc",
				"access_key": %q, "secret_key": %q}},
			"sources": [{"kind": "tree", "path": "/var/lib/data"}]}}`,
			tlsSection, testBin, marker, region, key, miniotest.AccessKey, miniotest.SecretKey))
	}

	vm := harness.Start(t, harness.Options{Name: "backup", Image: img, Config: config("eu-north-1"), Net: n,
		Disks: []string{newDisk(t, dir, "d0", 64<<20)}})
	vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	vm.MustWaitFor(`^bulwark:   backup +ok .*1 sources, key [0-9a-f]{16}…, region eu-north-1; s3 http://10.99.0.40:9000 bucket backups \(eu-north-1\), on request, a final round at shutdown`, time.Second)
	vm.MustWaitFor(`^bulwark: workload: wrote 4 MiB of marker to /var/lib/data/marker as uid 999$`, time.Minute)

	op := operator{t: t, from: ops, bin: ctlBin, dir: dir, caFile: filepath.Join(dir, "ca", "ca.pem")}
	if out, code := op.run("robot", "backup", "start"); code != 0 || !strings.Contains(out, "backup started") {
		t.Fatalf("backup start: exit %d\n%s", code, out)
	}
	done := vm.MustWaitFor(`^bulwark: backup: backup ([0-9a-f]{32}) eu-north-1 complete: tree /var/lib/data, [0-9]+ bytes, [0-9]+ segments in `, 3*time.Minute)
	id := strings.Fields(strings.TrimPrefix(done.Text, "bulwark: backup: backup "))[0]

	// The memory of the running node: the public key is there (the
	// control: the scan finds what is present), the private key is not,
	// in PEM, DER or as its primes.
	dump := filepath.Join(dir, "memory.elf")
	if err := vm.DumpMemory(dump); err != nil {
		t.Fatal(err)
	}
	mem, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(dump)
	pubLine := strings.Split(string(pubPEM), "\n")[1]
	if !bytes.Contains(mem, []byte(pubLine)) {
		t.Fatal("the memory scan does not find the public key the node holds")
	}
	privLines := strings.Split(string(privPEM), "\n")
	for name, needle := range map[string][]byte{
		"private key PEM line": []byte(privLines[5]),
		"prime p":              svc.Primes[0].Bytes()[:32],
		"prime q":              svc.Primes[1].Bytes()[:32],
		"prime p (LE words)":   leWords(svc.Primes[0].Bytes())[:32],
		"private exponent":     svc.D.Bytes()[:32],
	} {
		if bytes.Contains(mem, needle) {
			t.Errorf("the node's memory holds the %s", name)
		}
	}
	mem = nil

	// The service processes' memory, read by the test image's PID1
	// (hook "memscan"): in the front door and the management API the
	// node's certificate is there (the control), the volume key, the
	// keyslot passphrase and the S3 secret key are not, after a backup
	// round has used the S3 credentials; the backup process holds the S3
	// secret key (its control) and neither a volume key nor the TLS key.
	// PID1's own scan must find the S3 secret key, which it holds (it
	// also finds the volume key draws: the test image's own copies, kept
	// for the scan).
	for _, name := range []string{"pid1", "frontdoor", "mgmt", "backup"} {
		res, err := op.testHook("robot", name, "memscan")
		if err != nil {
			t.Fatal(err)
		}
		var scan struct {
			Result struct {
				Pid      int      `json:"pid"`
				Regions  int      `json:"regions"`
				Bytes    int64    `json:"bytes"`
				Control  bool     `json:"control_found"`
				Found    []string `json:"secrets_found"`
				Searched []string `json:"secrets_searched"`
			} `json:"result"`
		}
		if err := json.Unmarshal([]byte(res), &scan); err != nil {
			t.Fatalf("memscan %s: %v\n%s", name, err, res)
		}
		r := scan.Result
		t.Logf("memscan %s: pid %d, %d regions, %d bytes; control found %v; searched %q; found %q", name, r.Pid, r.Regions, r.Bytes, r.Control, r.Searched, r.Found)
		if len(r.Searched) != 6 || (name != "backup" && !r.Control) {
			t.Errorf("memscan %s does not find the node's certificate, or did not search for the 2 volume draws, the S3 secret and the TLS key: %+v", name, r)
		}
		var keys []string // what it found but the S3 secret key
		for _, f := range r.Found {
			if f != "S3 secret key" {
				keys = append(keys, f)
			}
		}
		switch {
		case (name == "pid1" || name == "backup") && !slices.Contains(r.Found, "S3 secret key"):
			t.Errorf("memscan does not find the S3 secret key in %s, which holds it: %+v", name, r)
		case name == "backup" && len(keys) != 0:
			t.Errorf("the backup process's memory holds: %q", keys)
		case name == "frontdoor" || name == "mgmt":
			if len(keys) != 0 && !(len(keys) == 1 && keys[0] == "TLS key PEM line") || slices.Contains(r.Found, "S3 secret key") {
				t.Errorf("the %s process's memory holds: %q", name, r.Found)
			}
		}
	}

	// The host restores with the private key, from the test bridge.
	t.Setenv("AWS_ACCESS_KEY_ID", miniotest.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", miniotest.SecretKey)
	store := []string{"--store", "s3://backups/svc", "--endpoint", "http://10.99.0.40:9000", "--region", "eu-north-1", "--allow-http"}
	if out, code := op.run("", append([]string{"backup", "list"}, store...)...); code != 0 || !strings.Contains(out, "db-1 "+id) || !strings.Contains(out, "complete") {
		t.Fatalf("backup list: exit %d\n%s", code, out)
	}
	want := bytes.Repeat([]byte(marker), 4<<20/len(marker)+1)
	want = bytes.Repeat(want[:1<<20], 4)
	restore := func(id string) string {
		to := filepath.Join(dir, "restored-"+id)
		args := append([]string{"backup", "restore", "--key", keyFile, "--node", "db-1", "--id", id, "--to", to, "--quiet"}, store...)
		if out, code := op.run("", args...); code != 0 {
			t.Fatalf("backup restore %s: exit %d\n%s", id, code, out)
		}
		got, err := os.ReadFile(filepath.Join(to, "marker"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("backup %s: restored marker file: %d bytes, not the %d the workload wrote", id, len(got), len(want))
		}
		return to
	}
	restored := restore(id)
	if _, err := os.Stat(filepath.Join(restored, "stopped")); !os.IsNotExist(err) {
		t.Fatalf("the backup taken while the workload ran holds the file it writes when stopped (stat: %v)", err)
	}
	if out, _ := op.run("robot", "status"); !strings.Contains(out, "last round") || !strings.Contains(out, id) {
		t.Errorf("status does not report the backup:\n%s", out)
	}

	// The backup process runs as its own uid with CAP_DAC_READ_SEARCH
	// alone; killed, made to panic, or made to call a system call its
	// filter forbids, it comes back confined as before, and the final
	// round below runs in the last new process.
	for i, c := range []struct{ hook, exit string }{
		{"kill", "killed by signal killed"},
		{"panic", "exited with status 2"},
		{"forbidden-syscall", "killed by signal bad system call"},
	} {
		if res, err := op.testHook("robot", "backup", c.hook); err != nil && c.hook == "kill" {
			t.Fatalf("killing the backup process: %s %v", res, err)
		}
		vm.MustWaitFor(`^bulwark: WARN: service backup: `+c.exit+`; restarting in `, time.Minute)
		back := regexp.MustCompile(fmt.Sprintf(`service backup: running, pid \d+, uid 61004, capabilities 0000000000000004, no_new_privs 1, seccomp 2, landlock [^,]+, %d restarts`, i+1))
		var st string
		for t0 := time.Now(); time.Since(t0) < time.Minute; time.Sleep(time.Second) {
			if st, _ = op.run("robot", "status"); back.MatchString(st) {
				break
			}
		}
		if !back.MatchString(st) {
			t.Fatalf("after backup hook %s: the backup process is not back, confined as before:\n%s", c.hook, st)
		}
	}
	if err := vm.PowerOff(2 * time.Minute); err != nil {
		t.Fatal(err)
	}

	// The final round ran after the workload stopped and before the
	// volume was erased, and restores with what the workload wrote when
	// it stopped.
	steps, err := inOrder(vm.Lines(),
		`^bulwark: shutting down `,
		`^bulwark: workload: stopped: wrote /var/lib/data/stopped$`,
		`^bulwark: teardown step="stop workload"`,
		`^bulwark: backup: backup ([0-9a-f]{32}) eu-north-1 complete: tree /var/lib/data, `,
		`^bulwark: teardown step="final backup"`,
		`^bulwark: teardown step="crypto-erase volume data"`)
	if err != nil {
		t.Fatal(err)
	}
	final := strings.Fields(strings.TrimPrefix(steps[3], "bulwark: backup: backup "))[0]
	if final == id {
		t.Fatalf("the final round reported the first backup's id %s", id)
	}
	stopped, err := os.ReadFile(filepath.Join(restore(final), "stopped"))
	if err != nil || string(stopped) != "stopped by SIGTERM\n" {
		t.Fatalf("the final backup does not hold what the workload wrote when it stopped: %q, %v", stopped, err)
	}

	// The same node pointed at the same bucket but told it is in another
	// region refuses the bucket and halts.
	vm = harness.Start(t, harness.Options{Name: "backup-region", Image: img, Config: config("us-east-1"), Net: n, ExpectFatal: true,
		Disks: []string{newDisk(t, dir, "d1", 64<<20)}})
	vm.MustWaitFor(`^bulwark: FATAL: .*bucket "backups" is in region "eu-north-1", but this node is in region "us-east-1"`, 3*time.Minute)
	if _, err := vm.WaitFor(`^bulwark: ready$`, time.Second); err == nil {
		t.Fatal("a node with a bucket in another region became ready")
	}

	// A final round that cannot reach the store fails its step: the node
	// says so instead of "powered off cleanly", and erases its volume all
	// the same.
	disk := newDisk(t, dir, "d2", 64<<20)
	vm = harness.Start(t, harness.Options{Name: "backup-final-fails", Image: img, Config: config("eu-north-1"), Net: n,
		Disks: []string{disk}})
	vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	srv.Stop()
	if err := vm.PowerButton(); err != nil {
		t.Fatal(err)
	}
	vm.MustWaitFor(`^bulwark: ERROR: powering off after failed teardown steps$`, 2*time.Minute)
	if _, err := inOrder(vm.Lines(),
		`^bulwark: teardown step="stop workload"`,
		`^bulwark: ERROR: teardown step failed step="final backup" err=.*1 of 1 sources not backed up: `,
		`^bulwark: teardown step="crypto-erase volume data"`,
	); err != nil {
		t.Fatal(err)
	}
	if err := vm.WaitExit(time.Minute); err != nil {
		t.Fatal(err)
	}
	assertErased(t, disk)
}

// inOrder finds a line for each pattern, each after the one before, and
// returns their texts.
func inOrder(lines []harness.Line, patterns ...string) ([]string, error) {
	var found []string
	i := 0
	for _, p := range patterns {
		re := regexp.MustCompile(p)
		for i < len(lines) && !re.MatchString(lines[i].Text) {
			i++
		}
		if i == len(lines) {
			return nil, fmt.Errorf("no line matching %q after %q", p, found)
		}
		found = append(found, lines[i].Text)
		i++
	}
	return found, nil
}

// leWords returns a big-endian number as the little-endian 64-bit words
// Go's big.Int keeps in memory.
func leWords(be []byte) []byte {
	out := make([]byte, 0, len(be))
	for end := len(be); end > 0; end -= 8 {
		start := max(0, end-8)
		w := make([]byte, 8)
		copy(w[8-(end-start):], be[start:end])
		for i := 7; i >= 0; i-- {
			out = append(out, w[i])
		}
	}
	return out
}
