// Package miniotest runs a real MinIO server for tests: the binary that
// `make minio` builds from the Go module proxy at the version pinned in
// tools/minio/go.mod.
package miniotest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/bulwarkvm/bulwark/internal/objstore/s3"
	"github.com/bulwarkvm/bulwark/internal/proc"
)

// Credentials of every test server.
const (
	AccessKey = "bulwark-test"
	SecretKey = "bulwark-test-secret"
)

// T is what the package needs of a test (testing.TB has it; so does the
// demo's runner).
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Binary finds the MinIO server: $BULWARK_MINIO, or out/tools/minio in
// the repository.
func Binary(t T) string {
	t.Helper()
	if p := os.Getenv("BULWARK_MINIO"); p != "" {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "../../../out/tools/minio")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no MinIO server at %s: run `make minio` (make test does)", p)
	}
	return p
}

// Server is a MinIO server with its data directory.
type Server struct {
	t      T
	Addr   string // host:port
	Region string
	dir    string
	certs  string // the certificate directory, for https
	netns  string
	domain string
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	roots  *x509.CertPool
	client *http.Client
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Options say where the server listens and in which region it is.
type Options struct {
	Addr   string // default: a free loopback port
	Region string
	// Netns runs the server in that network namespace (ip netns exec),
	// and Dial reaches it there; both or neither.
	Netns string
	Dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSCert and TLSKey (PEM), when set, make the server speak https
	// with that certificate; Roots then let the helper's own client
	// trust it.
	TLSCert, TLSKey []byte
	Roots           *x509.CertPool
	// Domain, when set, is the server's MINIO_DOMAIN: it then also
	// serves virtual-hosted requests, the bucket in the host name
	// (BUCKET.Domain).
	Domain string
}

// Start starts a server and waits until it reports itself ready to serve
// (a live server can still answer 503 "not initialized"); it is stopped
// when the test ends.
func Start(t T, o Options) *Server {
	t.Helper()
	if o.Addr == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("%v", err)
		}
		o.Addr = l.Addr().String()
		l.Close()
	}
	tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{RootCAs: o.Roots}}
	if o.Dial != nil {
		tr.DialContext = o.Dial
	}
	dir, err := os.MkdirTemp("", "minio-")
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{t: t, Addr: o.Addr, Region: o.Region, dir: dir, netns: o.Netns, domain: o.Domain, dial: o.Dial, roots: o.Roots, client: &http.Client{Transport: tr, Timeout: 5 * time.Second}}
	if o.TLSCert != nil {
		// MinIO reads public.crt and private.key from its certificate
		// directory, kept outside the data directory.
		s.certs = dir + "-certs"
		t.Cleanup(func() { os.RemoveAll(s.certs) })
		if err := os.Mkdir(s.certs, 0o700); err != nil {
			t.Fatalf("%v", err)
		}
		if err := os.WriteFile(filepath.Join(s.certs, "public.crt"), o.TLSCert, 0o600); err != nil {
			t.Fatalf("%v", err)
		}
		if err := os.WriteFile(filepath.Join(s.certs, "private.key"), o.TLSKey, 0o600); err != nil {
			t.Fatalf("%v", err)
		}
	}
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// Endpoint is the server's URL.
func (s *Server) Endpoint() string {
	if s.certs != "" {
		return "https://" + s.Addr
	}
	return "http://" + s.Addr
}

// Stop kills the server (as a crash would) and waits for it.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Restart starts the server again on the same address and data.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	host, _, _ := net.SplitHostPort(s.Addr)
	args := []string{Binary(s.t), "server", "--quiet", "--address", s.Addr, "--console-address", net.JoinHostPort(host, "0")}
	if s.certs != "" {
		args = append(args, "--certs-dir", s.certs)
	}
	args = append(args, s.dir)
	if s.netns != "" {
		// ip netns exec execs the server, so the process is MinIO itself.
		args = append([]string{"ip", "netns", "exec", s.netns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+AccessKey, "MINIO_ROOT_PASSWORD="+SecretKey,
		"MINIO_REGION="+s.Region, "MINIO_SITE_REGION="+s.Region, "MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME="+s.dir)
	if s.domain != "" {
		cmd.Env = append(cmd.Env, "MINIO_DOMAIN="+s.domain)
	}
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	exited := make(chan struct{})
	if err := proc.StartPinned(cmd, exited); err != nil {
		s.t.Fatalf("starting MinIO: %v", err)
	}
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := s.client.Get(s.Endpoint() + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("MinIO at %s did not come up: %v\n%s", s.Addr, err, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// MakeBucket creates a bucket in the server's region.
func (s *Server) MakeBucket(t T, name string) {
	t.Helper()
	o := s3.Options{Endpoint: s.Endpoint(), AllowHTTP: true, Bucket: name, Region: s.Region, AccessKey: AccessKey, SecretKey: SecretKey,
		DialContext: s.dial, RootCAs: s.roots}
	if err := s3.CreateBucket(context.Background(), o); err != nil {
		t.Fatalf("making bucket %s: %v", name, err)
	}
	// MinIO can answer ready before its region setting applies, and
	// then reports the bucket in us-east-1 for a moment (seen once in
	// CI): wait until the bucket is in the server's region.
	var re *s3.RegionError
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, err := s3.New(context.Background(), o)
		if err == nil {
			return
		}
		if !errors.As(err, &re) || time.Now().After(deadline) {
			t.Fatalf("bucket %s: %v", name, err)
		}
	}
}

// AssumeRole asks the server's STS (AssumeRole, signed with the test
// user's keys) for temporary credentials of that user: an access key and
// secret of their own and a session token, valid for 15 minutes.
func (s *Server) AssumeRole(t T) credentials.Value {
	t.Helper()
	c, err := credentials.NewSTSAssumeRole(s.Endpoint(), credentials.STSAssumeRoleOptions{
		AccessKey: AccessKey, SecretKey: SecretKey, Location: s.Region, DurationSeconds: 900,
	})
	if err != nil {
		t.Fatalf("AssumeRole: %v", err)
	}
	v, err := c.GetWithContext(&credentials.CredContext{Client: http.DefaultClient})
	if err != nil {
		t.Fatalf("AssumeRole: %v", err)
	}
	if v.SessionToken == "" || v.AccessKeyID == AccessKey {
		t.Fatalf("AssumeRole gave no temporary credentials: key %q, token %d bytes", v.AccessKeyID, len(v.SessionToken))
	}
	return v
}

func (s *Server) String() string { return fmt.Sprintf("MinIO %s (%s)", s.Addr, s.Region) }
