package frontdoor

import (
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// pgBin finds a PostgreSQL server program from Debian's postgresql package.
func pgBin(t *testing.T, name string) string {
	t.Helper()
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	if len(m) == 0 {
		t.Fatalf("%s not found: make deps installs Debian's postgresql package", name)
	}
	return m[len(m)-1]
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The front door in front of a real PostgreSQL, in a network namespace of
// its own: psql with sslmode=verify-full and the project CA runs a query,
// sslmode=disable gets the TLS-required error, and a client trusting
// another CA refuses the node.
func TestRealPostgreSQL(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (a network namespace, PostgreSQL run as the postgres user); make test runs it as root")
	}
	initdb, postgres := pgBin(t, "initdb"), pgBin(t, "postgres")
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql not found: make deps installs Debian's postgresql package")
	}
	ns := fmt.Sprintf("bwfd-%d", os.Getpid())
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")

	dir, err := os.MkdirTemp("", "bwpg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	os.Chmod(dir, 0o755)
	run(t, "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "700", data)
	run(t, "runuser", "-u", "postgres", "--", initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
	pg := exec.Command("ip", "netns", "exec", ns, "runuser", "-u", "postgres", "--", postgres, "-D", data,
		"-c", "listen_addresses=127.0.0.1", "-c", "port=5433", "-c", "unix_socket_directories="+data, "-c", "fsync=off")
	pgLog := &strings.Builder{}
	pg.Stdout, pg.Stderr = pgLog, pgLog
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Immediate shutdown of the postmaster (runuser does not pass
		// signals on), then reap the wrappers.
		if b, err := os.ReadFile(filepath.Join(data, "postmaster.pid")); err == nil {
			var pid int
			fmt.Sscan(string(b), &pid)
			if pid > 0 {
				syscall.Kill(pid, syscall.SIGQUIT)
			}
		}
		pg.Wait()
	})
	sock := filepath.Join(data, ".s.PGSQL.5433")
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 100 {
			t.Fatalf("PostgreSQL did not start:\n%s", pgLog)
		}
		time.Sleep(100 * time.Millisecond)
	}

	f := newFixture(t)
	var s *Server
	var lerr error
	// The listener is made inside the namespace; the unix socket backend
	// is reachable from any namespace.
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err != nil {
			lerr = err
			return
		}
		defer h.Close()
		if lerr = netns.Set(h); lerr != nil {
			return
		}
		s, lerr = Listen(Options{Addr: "127.0.0.1:5432", Protocol: Postgres, Backend: "unix:" + sock,
			TLS: &tls.Config{Certificates: []tls.Certificate{f.server}}})
	}()
	<-done
	if lerr != nil {
		t.Fatal(lerr)
	}
	go s.Serve()
	t.Cleanup(func() { s.Close() })

	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, f.ca.PEM, 0o644)
	otherFile := filepath.Join(dir, "other.pem")
	os.WriteFile(otherFile, f.other.PEM, 0o644)
	psqlIn := func(conninfo string) (string, error) {
		cmd := exec.Command("ip", "netns", "exec", ns, psql, "-X", "-A", "-t", conninfo, "-c", "select 'through the front door'")
		cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	base := "host=127.0.0.1 port=5432 user=postgres dbname=postgres "
	out, err := psqlIn(base + "sslmode=verify-full sslrootcert=" + caFile)
	if err != nil {
		t.Fatalf("psql verify-full: %v\n%s\npostgres log:\n%s", err, out, pgLog)
	}
	if out != "through the front door" {
		t.Fatalf("psql verify-full printed %q", out)
	}
	t.Logf("verify-full: %s", out)

	out, err = psqlIn(base + "sslmode=disable")
	if err == nil || !strings.Contains(out, RequiredMessage) {
		t.Fatalf("psql sslmode=disable: %v\n%s", err, out)
	}
	t.Logf("sslmode=disable: %s", out)

	out, err = psqlIn(base + "sslmode=verify-full sslrootcert=" + otherFile)
	if err == nil || !strings.Contains(out, "certificate verify failed") {
		t.Fatalf("psql with another CA: %v\n%s", err, out)
	}
	t.Logf("another CA: %s", out)

}
