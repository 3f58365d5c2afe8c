package qemutests

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// buildCtl builds bulwarkctl for the host.
func buildCtl(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "bulwarkctl")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/bulwarkctl")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building bulwarkctl: %v\n%s", err, out)
	}
	return bin
}

// operator runs bulwarkctl from a test client (the management source)
// against the node at 10.99.0.10:9443, with the project CA caFile and the
// client certificates <who>.pem and <who>.key in dir.
type operator struct {
	t           testing.TB
	from        *harness.Client
	bin         string
	dir, caFile string
}

// run runs bulwarkctl as who ("" for an offline command, which gets no
// node flags) and returns its output and exit code.
func (o operator) run(who string, args ...string) (string, int) {
	o.t.Helper()
	if who != "" {
		args = append(args, "--node", "10.99.0.10:9443", "--ca", o.caFile,
			"--cert", filepath.Join(o.dir, who+".pem"), "--key", filepath.Join(o.dir, who+".key"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := o.from.Command(ctx, o.bin, args...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		o.t.Fatal(err)
	}
	return string(out), code
}
