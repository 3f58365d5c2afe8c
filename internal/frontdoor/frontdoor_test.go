package frontdoor

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/pki"
)

type fixture struct {
	ca, other *pki.CA
	server    tls.Certificate
	pool      *x509.CertPool
	backend   string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	ca, err := pki.Init(filepath.Join(t.TempDir(), "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.Init(filepath.Join(t.TempDir(), "other"), "evil", "")
	node, err := ca.IssueNode(pki.NodeRequest{Name: "db.test", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(node.CertPEM, node.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &fixture{ca: ca, other: other, server: cert, pool: pool, backend: echoServer(t)}
}

// echoServer is a stand-in workload on loopback.
func echoServer(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return echoOn(t, ln)
}

// echoOn echoes every connection ln accepts until the test ends, and
// returns its address.
func echoOn(t testing.TB, ln net.Listener) string {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func (f *fixture) start(t testing.TB, o Options) *Server {
	t.Helper()
	o.Addr = "127.0.0.1:0"
	o.Backend = f.backend
	o.TLS = &tls.Config{Certificates: []tls.Certificate{f.server}}
	s, err := Listen(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Close() })
	return s
}

func echoes(t *testing.T, c net.Conn) {
	t.Helper()
	msg := []byte("hello through the front door")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %q %v", got, err)
	}
}

func TestGenericTLS(t *testing.T) {
	f := newFixture(t)
	s := f.start(t, Options{Protocol: TLS})
	c, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: f.pool, ServerName: "db.test"})
	if err != nil {
		t.Fatal(err)
	}
	if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("negotiated %x, want TLS 1.3", v)
	}
	echoes(t, c)
	c.Close()
	// A client that trusts another CA refuses the node.
	other := x509.NewCertPool()
	other.AddCert(f.other.Cert)
	if _, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: other, ServerName: "db.test"}); err == nil {
		t.Fatal("a client trusting another CA connected")
	}
	// TLS 1.1 is refused.
	if _, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: f.pool, ServerName: "db.test", MaxVersion: tls.VersionTLS11}); err == nil {
		t.Fatal("TLS 1.1 accepted")
	}
	// Plaintext never reaches the workload: the bytes are not echoed.
	p, _ := net.Dial("tcp", s.Addr().String())
	p.SetDeadline(time.Now().Add(3 * time.Second))
	p.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	b, _ := io.ReadAll(p)
	if bytes.Contains(b, []byte("GET /")) {
		t.Fatal("plaintext was echoed by the workload")
	}
}

func sslRequest(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var m [8]byte
	binary.BigEndian.PutUint32(m[0:], 8)
	binary.BigEndian.PutUint32(m[4:], pgSSLRequest)
	c.Write(m[:])
	var r [1]byte
	if _, err := io.ReadFull(c, r[:]); err != nil || r[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v", r, err)
	}
	return c
}

func TestPostgresNegotiation(t *testing.T) {
	f := newFixture(t)
	s := f.start(t, Options{Protocol: Postgres})
	addr := s.Addr().String()
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "db.test"}

	// SSLRequest, then TLS.
	tc := tls.Client(sslRequest(t, addr), cfg)
	echoes(t, tc)
	tc.Close()

	// Direct TLS with ALPN postgresql.
	withALPN := cfg.Clone()
	withALPN.NextProtos = []string{"postgresql"}
	dc, err := tls.Dial("tcp", addr, withALPN)
	if err != nil {
		t.Fatal(err)
	}
	echoes(t, dc)
	dc.Close()

	// Direct TLS without ALPN is closed after the handshake.
	nc, err := tls.Dial("tcp", addr, cfg)
	if err == nil {
		nc.SetDeadline(time.Now().Add(3 * time.Second))
		nc.Write([]byte("x"))
		if _, err := nc.Read(make([]byte, 1)); err == nil {
			t.Fatal("direct TLS without ALPN reached the workload")
		}
	}

	// A plaintext StartupMessage gets a PostgreSQL error.
	pc, _ := net.Dial("tcp", addr)
	startup := []byte{0, 0, 0, 0, 0, 3, 0, 0}
	startup = append(startup, "user\x00postgres\x00\x00"...)
	binary.BigEndian.PutUint32(startup, uint32(len(startup)))
	pc.Write(startup)
	pc.SetDeadline(time.Now().Add(3 * time.Second))
	resp, _ := io.ReadAll(bufio.NewReader(pc))
	if len(resp) < 5 || resp[0] != 'E' || !bytes.Contains(resp, []byte(RequiredMessage)) || !bytes.Contains(resp, []byte("C28000\x00")) {
		t.Fatalf("plaintext startup answered %q", resp)
	}
	if st := s.Stats(); st.Plaintext != 1 || st.Served != 2 {
		t.Fatalf("stats %+v", st)
	}

	// Bytes sent after SSLRequest before the answer are refused (no
	// plaintext injection into the TLS stream).
	ic, _ := net.Dial("tcp", addr)
	var m [8]byte
	binary.BigEndian.PutUint32(m[0:], 8)
	binary.BigEndian.PutUint32(m[4:], pgSSLRequest)
	ic.Write(append(m[:], "injected"...))
	ic.SetDeadline(time.Now().Add(3 * time.Second))
	if b, _ := io.ReadAll(ic); len(b) != 0 {
		t.Fatalf("injection answered %q", b)
	}
}

func TestLimits(t *testing.T) {
	f := newFixture(t)
	s := f.start(t, Options{Protocol: TLS, MaxPerSource: 2, HandshakeTimeout: 300 * time.Millisecond})
	addr := s.Addr().String()
	// A client that sends nothing is dropped after the handshake timeout.
	idle, _ := net.Dial("tcp", addr)
	idle.SetDeadline(time.Now().Add(5 * time.Second))
	t0 := time.Now()
	if _, err := idle.Read(make([]byte, 1)); err == nil || time.Since(t0) > 3*time.Second {
		t.Fatalf("idle client: %v after %v", err, time.Since(t0))
	}
	// Two connections from one address are served; a third is closed.
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "db.test"}
	a, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	echoes(t, a)
	echoes(t, b)
	if c, err := tls.Dial("tcp", addr, cfg); err == nil {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte("x"))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("a third connection from one source was served")
		}
	}
}
