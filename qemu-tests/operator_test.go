package qemutests

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/pki"
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

// projectPKI makes a project CA in dir, a node certificate for db-1 at
// 10.99.0.10 and a client certificate for each name with its role,
// written as <dir>/<name>.pem and .key, where operator.run finds them. It
// returns the node's tls config section (JSON).
func projectPKI(t testing.TB, dir string, clients map[string]string) []byte {
	t.Helper()
	ca, err := pki.Init(filepath.Join(dir, "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	node, err := ca.IssueNode(pki.NodeRequest{Name: "db-1", IPs: []net.IP{net.ParseIP("10.99.0.10")}})
	if err != nil {
		t.Fatal(err)
	}
	for name, role := range clients {
		c, err := ca.IssueClient(name, role, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name+".pem"), c.CertPEM, 0o644)
		os.WriteFile(filepath.Join(dir, name+".key"), c.KeyPEM, 0o600)
	}
	section, _ := json.Marshal(map[string]any{"ca": string(ca.PEM), "certificate": string(node.CertPEM), "key": string(node.KeyPEM)})
	return section
}

// testHook calls the test image's POST /v1/test/hook as who: it breaks
// service on purpose (hook "kill", "panic" or "forbidden-syscall").
func (o operator) testHook(who, service, hook string) (string, error) {
	o.t.Helper()
	caPEM, err := os.ReadFile(o.caFile)
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(filepath.Join(o.dir, who+".pem"), filepath.Join(o.dir, who+".key"))
	if err != nil {
		return "", err
	}
	var body []byte
	err = o.from.Do(func() error {
		hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "10.99.0.10", Certificates: []tls.Certificate{cert}},
			// Dial inside the client's namespace: the transport dials on
			// threads of its own.
			DialContext: o.from.Dial}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Post("https://10.99.0.10:9443/v1/test/hook", "application/json",
			strings.NewReader(fmt.Sprintf(`{"service": %q, "hook": %q}`, service, hook)))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ = io.ReadAll(resp.Body)
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("test hook %s %s: %s: %s", service, hook, resp.Status, body)
		}
		return nil
	})
	return string(body), err
}
