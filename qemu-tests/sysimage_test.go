package qemutests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/imagebuild"
	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// postgresProg is the program the system image test runs: the database
// server from Debian's postgresql-15, which links a dozen libraries that
// all come from the image (ICU, OpenSSL, Kerberos, LDAP, libxml2, ...).
const postgresProg = "/usr/lib/postgresql/15/bin/postgres"

// builtReport reads the build report of the image make image wrote.
func builtReport(t *testing.T, img harness.Image) (*imagebuild.Report, string) {
	t.Helper()
	dir := filepath.Dir(img.Kernel)
	b, err := os.ReadFile(filepath.Join(dir, "build-report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep imagebuild.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.SystemImage == nil {
		t.Fatalf("%s has no system image: run make image (its default packages make one)", dir)
	}
	return &rep, filepath.Join(dir, "build-report.json")
}

// TestSystemImage boots the image make image built with its system image
// (out/system.img on the virtio disk bulwark-system, the root hash on the
// kernel command line) and the database server's --version as the
// workload: the program and every library it loads come from the
// dm-verity-checked image mounted on /usr, its output is on the console,
// PCR 15 holds the root hash, and bulwarkctl attest --image passes with
// this build's report and fails with another build's. Then: one byte
// flipped inside the program on the image halts the node with a FATAL
// naming dm-verity before the program runs; a root hash on the command
// line that is not the image's, a missing image, and a command line
// without a root hash each halt it with a FATAL that says so, and no
// workload runs.
func TestSystemImage(t *testing.T) {
	img := image(t)
	rep, reportFile := builtReport(t, img)
	si := rep.SystemImage
	sysFile := img.System
	if !strings.HasSuffix(img.Cmdline, " "+si.Cmdline) {
		t.Fatalf("the build's command line %q does not bind its system image (%s)", img.Cmdline, si.Cmdline)
	}
	noHash := strings.TrimSuffix(img.Cmdline, " "+si.Cmdline)
	workload := fmt.Sprintf(`"workload": {"command": [%q, "--version"], "uid": 999, "gid": 999}`, postgresProg)
	versionLine := `^bulwark: workload: postgres \(PostgreSQL\) 15\.`

	t.Run("runs from the image", func(t *testing.T) {
		dir := t.TempDir()
		ctlBin := buildCtl(t)
		tlsSection := projectPKI(t, dir, map[string]string{"auditor": pki.RoleOperator})
		n := harness.NewNet(t)
		ops := n.AddClient("10.99.0.5/24")
		cfg := []byte(fmt.Sprintf(`{"version": 1, "hostname": "db-1",
		"network": {"interfaces": [{"name": "eth0", "addresses": ["10.99.0.10/24"]}]},
		"firewall": {"management_sources": ["10.99.0.5"]},
		"tls": %s, %s}`, tlsSection, workload))
		vm := harness.Start(t, harness.Options{Name: "sysimage", Image: img, Config: cfg, Net: n, TPM: true})
		vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
		vm.MustWaitFor(`^bulwark:   system image +ok +.*root hash `+si.RootHash[:16]+`…, /dev/vd[a-z] \(disk bulwark-system\)`, time.Second)
		vm.MustWaitFor(`^bulwark:   usr +ok +.*the system image on /usr \(read-only, nodev, nosuid\)`, time.Second)
		vm.MustWaitFor(`^bulwark:   measure +ok .*PCR 15: 3 events \(config, firewall ruleset, 0 LUKS2 headers, system image\)`, time.Second)
		l := vm.MustWaitFor(versionLine, time.Minute)
		t.Logf("the workload from the system image: %s", l.Text)

		op := operator{t: t, from: ops, bin: ctlBin, dir: dir, caFile: filepath.Join(dir, "ca", "ca.pem")}
		saved := filepath.Join(dir, "saved.json")
		out, code := op.run("auditor", "attest", "--image", reportFile, "--save", saved)
		if code != 0 || !strings.Contains(out, "ok   system image root hash "+si.RootHash) || !strings.Contains(out, "system-image /usr sha256:"+si.RootHash) {
			t.Fatalf("attest --image with this build's report: exit %d\n%s", code, out)
		}
		t.Logf("bulwarkctl attest --image:\n%s", out)
		// Another build: its system image has another root hash.
		var other imagebuild.Report
		b, _ := os.ReadFile(reportFile)
		json.Unmarshal(b, &other)
		other.SystemImage.RootHash = strings.Repeat("0", 64)
		otherFile := filepath.Join(dir, "other-build-report.json")
		b, _ = json.Marshal(other)
		os.WriteFile(otherFile, b, 0o644)
		if out, code := op.run("", "attest", "verify", saved, "--image", otherFile); code != 1 || !strings.Contains(out, "FAIL system image: the node runs root hash "+si.RootHash) {
			t.Errorf("attest verify --image with another build's report: exit %d\n%s", code, out)
		}
		if err := vm.PowerOff(2 * time.Minute); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a flipped byte in the program", func(t *testing.T) {
		damaged := filepath.Join(t.TempDir(), "system.img")
		b, err := os.ReadFile(sysFile)
		if err != nil {
			t.Fatal(err)
		}
		off, n, err := imagebuild.FileExtent(sysFile, strings.TrimPrefix(postgresProg, "/usr/"))
		if err != nil {
			t.Fatal(err)
		}
		b[off+n/2] ^= 0x01
		if err := os.WriteFile(damaged, b, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Logf("flipped the byte at %d, inside %s's first data block (%d bytes at %d)", off+n/2, postgresProg, n, off)
		im := img
		im.System = damaged
		vm := harness.Start(t, harness.Options{Name: "sysimage-corrupt", Image: im, ExpectFatal: true,
			Config: []byte(`{"version": 1, "hostname": "db-1", ` + workload + `}`)})
		// The kernel's own copy of the FATAL line (the init logs it to
		// /dev/kmsg too) and its dm-verity errors reach the same serial
		// console at that instant and can cut into the init's line, so
		// the text is matched anywhere after the line's start.
		vm.MustWaitFor(`^bulwark: FATAL: system image: dm-verity: (.*\] bulwark: FATAL: system image: dm-verity: )?the workload's program `+regexp.QuoteMeta(postgresProg)+` fails verification`, bootTimeout)
		vm.MustWaitFor(`^bulwark: halted`, 10*time.Second)
		for _, l := range vm.Lines() {
			if regexp.MustCompile(versionLine).MatchString(l.Text) || l.Text == "bulwark: ready" || strings.HasPrefix(l.Text, "bulwark:   volumes ") {
				t.Errorf("the node went on: %s", l.Text)
			}
		}
		if !strings.Contains(vm.Console(), "device-mapper: verity") {
			t.Log("note: the kernel's own dm-verity message is not on the console")
		}
		if err := vm.PowerOff(offTimeout); err != nil {
			t.Fatal(err)
		}
	})

	wrong := []byte(si.RootHash)
	if wrong[0] == '0' {
		wrong[0] = '1'
	} else {
		wrong[0] = '0'
	}
	for _, c := range []struct {
		name, cmdline string
		disk          bool
		want          string
		// bare: a config without a workload, so that nothing but the
		// command line can stop the node.
		bare bool
	}{
		{"a root hash that is not the image's", noHash + " " + imagebuild.UsrHashParam + "=" + string(wrong), true,
			`system image: the root hash on the kernel command line \(bulwark\.usrhash=` + string(wrong[:16]) + `…\) does not match the image on /dev/vd[a-z] \(disk bulwark-system\)`, false},
		{"no image", img.Cmdline, false, `system image: not found: no usr and usr-verity partitions with the UUIDs of root hash ` + si.RootHash[:16] + `…, and no disk with serial bulwark-system`, false},
		{"no root hash", noHash, true, `system image: the kernel command line has no bulwark\.usrhash= \(the root hash of the node's system image\)`, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			im := img
			im.Cmdline = c.cmdline
			cfg := `{"version": 1, "hostname": "db-1", ` + workload + `}`
			if c.bare {
				cfg = `{"version": 1, "hostname": "db-1"}`
			}
			o := harness.Options{Name: "sysimage-fatal", Image: im, ExpectFatal: true, NoSystemDisk: !c.disk, Config: []byte(cfg)}
			vm := harness.Start(t, o)
			// As above: the kernel's copy of the line may cut into it;
			// the whole text must still be there, in one of the copies.
			vm.MustWaitFor(`^bulwark: FATAL: (.*\] bulwark: FATAL: )?`+c.want, bootTimeout)
			vm.MustWaitFor(`^bulwark: halted`, 10*time.Second)
			for _, l := range vm.Lines() {
				if regexp.MustCompile(versionLine).MatchString(l.Text) || l.Text == "bulwark: ready" || strings.HasPrefix(l.Text, "bulwark:   volumes ") {
					t.Errorf("the node went on: %s", l.Text)
				}
			}
			if err := vm.PowerOff(offTimeout); err != nil {
				t.Fatal(err)
			}
		})
	}
}
