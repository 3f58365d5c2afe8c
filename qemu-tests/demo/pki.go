package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// demoPKI is the demo's project CA and the certificates it issued, made
// with bulwarkctl as an operator would.
type demoPKI struct {
	dir, ctlBin, caFile string
	caText              string
	pool                *x509.CertPool
	tlsJSON             []byte
}

func newPKI(r *runner, dir string) *demoPKI {
	p := &demoPKI{dir: dir, ctlBin: filepath.Join(dir, "bulwarkctl"), caFile: filepath.Join(dir, "ca", "ca.pem")}
	if out, err := exec.Command("go", "build", "-o", p.ctlBin, "./cmd/bulwarkctl").CombinedOutput(); err != nil {
		r.Fatalf("building bulwarkctl: %v\n%s", err, out)
	}
	run := func(args ...string) string {
		out, err := exec.Command(p.ctlBin, args...).CombinedOutput()
		if err != nil {
			r.Fatalf("bulwarkctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	ca := filepath.Join(dir, "ca")
	run("ca", "init", "--dir", ca, "--project", "acme")
	run("ca", "issue", "node", "--dir", ca, "--name", "db-node-1", "--ip", "10.99.0.10,fd99::10", "--out", filepath.Join(dir, "node"), "--tls-json", filepath.Join(dir, "tls.json"))
	run("ca", "issue", "node", "--dir", ca, "--name", "db-node-2", "--ip", "10.99.0.11", "--out", filepath.Join(dir, "node2"), "--tls-json", filepath.Join(dir, "tls2.json"))
	run("ca", "issue", "client", "--dir", ca, "--name", "alice", "--role", "operator", "--out", filepath.Join(dir, "alice"))
	run("ca", "issue", "client", "--dir", ca, "--name", "robot", "--role", "control-plane", "--out", filepath.Join(dir, "robot"))
	c, err := pki.Load(ca)
	if err != nil {
		r.Fatal(err)
	}
	p.caText = pki.Describe(c.Cert)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(c.Cert)
	if p.tlsJSON, err = os.ReadFile(filepath.Join(dir, "tls.json")); err != nil {
		r.Fatal(err)
	}
	return p
}

// addToConfig adds the tls section and a PostgreSQL front door (with
// nothing behind it in the demo: the production image has no database)
// to the example config.
func (p *demoPKI) addToConfig(r *runner, cfg []byte) []byte {
	var doc map[string]any
	if err := json.Unmarshal(cfg, &doc); err != nil {
		r.Fatal(err)
	}
	var t map[string]any
	json.Unmarshal(p.tlsJSON, &t)
	doc["tls"] = t
	doc["front_door"] = []map[string]any{{"port": 5432, "protocol": "postgres", "backend": "127.0.0.1:5433"}}
	doc["ipsec"] = map[string]any{"address": "10.99.0.10", "peers": []map[string]string{{"name": "db-node-2", "address": "10.99.0.11"}}}
	fw := doc["firewall"].(map[string]any)
	fw["egress"] = map[string]any{"backup": []map[string]any{{"address": "10.99.0.40", "port": 9000}}}
	doc["backup"] = p.backupSection(r)
	out, err := json.Marshal(doc)
	if err != nil {
		r.Fatal(err)
	}
	return out
}

// secondNode is the config of the service's second node, db-node-2 at
// 10.99.0.11, keyed with the first over IPsec.
func (p *demoPKI) secondNode(r *runner) []byte {
	var t map[string]any
	b, err := os.ReadFile(filepath.Join(p.dir, "tls2.json"))
	if err != nil {
		r.Fatal(err)
	}
	json.Unmarshal(b, &t)
	doc := map[string]any{
		"version":  1,
		"hostname": "db-node-2",
		"network":  map[string]any{"interfaces": []map[string]any{{"name": "eth0", "addresses": []string{"10.99.0.11/24"}}}},
		"tls":      t,
		"ipsec":    map[string]any{"address": "10.99.0.11", "peers": []map[string]string{{"name": "db-node-1", "address": "10.99.0.10"}}},
	}
	out, _ := json.Marshal(doc)
	return out
}

// tlsHandshake makes a TLS connection (ALPN postgresql, as a direct-TLS
// PostgreSQL client does) from inside the client's namespace and
// describes it.
func (p *demoPKI) tlsHandshake(r *runner, c *harness.Client, addr string) string {
	var desc string
	err := c.Do(func() error {
		host, _, _ := net.SplitHostPort(addr)
		tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 20 * time.Second}, "tcp", addr,
			&tls.Config{RootCAs: p.pool, ServerName: host, NextProtos: []string{"postgresql"}})
		if err != nil {
			return err
		}
		defer tc.Close()
		st := tc.ConnectionState()
		desc = fmt.Sprintf("TLS to %s: %s, %s, certificate %q verified against the project CA",
			addr, tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.PeerCertificates[0].Subject.String())
		return nil
	})
	if err != nil {
		r.Fatalf("TLS to %s: %v", addr, err)
	}
	return desc
}

// ctl runs bulwarkctl in the client's namespace (on the host when c is
// nil) as who ("" for offline commands) and checks its exit code.
func (p *demoPKI) ctl(r *runner, c *harness.Client, who string, want int, args ...string) string {
	if who != "" {
		args = append(args, "--node", "10.99.0.10:9443", "--ca", p.caFile,
			"--cert", filepath.Join(p.dir, who+".pem"), "--key", filepath.Join(p.dir, who+".key"))
	}
	var cmd *exec.Cmd
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if c != nil {
		cmd = c.Command(ctx, p.ctlBin, args...)
	} else {
		cmd = exec.CommandContext(ctx, p.ctlBin, args...)
	}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		r.Fatal(err)
	}
	if code != want {
		r.Fatalf("bulwarkctl %v as %s: exit %d, want %d\n%s", args[:2], who, code, want, out)
	}
	return string(out)
}
