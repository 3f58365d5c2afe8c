// Package frontdoor is the node's TLS front door: it listens on a client
// port, speaks TLS with the node's project-signed certificate, and proxies
// the decrypted stream to the workload on loopback or a unix socket. For
// PostgreSQL it understands the protocol's own TLS negotiation
// (SSLRequest, direct TLS with ALPN "postgresql") and answers a plaintext
// startup with a PostgreSQL error saying TLS is required. Plaintext from
// the network never reaches the workload. See docs/frontdoor.md.
package frontdoor

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// Protocols.
const (
	Postgres = "postgres"
	TLS      = "tls"
)

// Defaults.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxPerSource     = 64
	// DefaultMaxConns bounds the connections of one front door from all
	// sources together: the per-source limit alone lets a few dozen
	// sources take every file descriptor of the process.
	DefaultMaxConns = 1024
	// DefaultIdleTimeout closes a proxied connection that carried no byte
	// in either direction for this long.
	DefaultIdleTimeout = 30 * time.Minute
	// FDReserve is how many file descriptors of the process the front
	// doors leave to the node's own work (management API, keying, audit
	// log, backups, volumes), whatever their limits say.
	FDReserve = 512
)

// PostgreSQL protocol codes (the "protocol version" field of the first
// message).
const (
	pgSSLRequest    = 80877103
	pgGSSENCRequest = 80877104
	pgCancelRequest = 80877102
	pgProtocol3     = 196608
	pgMaxStartup    = 10000
)

// RequiredMessage is what a plaintext PostgreSQL client is told.
const RequiredMessage = "bulwark: TLS is required on this port: connect with sslmode=verify-full and the project CA as sslrootcert"

// Options configure one front door.
type Options struct {
	Addr string // listen address, such as ":5432"
	// Listener, when set, is used instead of listening on Addr: the
	// front door's process gets its listening socket from PID1.
	Listener         net.Listener
	Protocol         string // Postgres or TLS
	Backend          string // "127.0.0.1:5433" or "unix:/path"
	TLS              *tls.Config
	HandshakeTimeout time.Duration
	MaxPerSource     int
	// MaxConns bounds the connections from all sources together; Listen
	// lowers it to what the process's descriptor limit allows after
	// FDReserve (each proxied connection holds two descriptors).
	MaxConns    int
	IdleTimeout time.Duration
	Log         *slog.Logger
}

// Stats are counters for status.
type Stats struct {
	Active, Served, Refused, Plaintext int64
	// Limit is the global connection limit in force; OverLimit counts the
	// connections refused because of it, Idle those closed for idleness.
	Limit     int   `json:",omitempty"`
	OverLimit int64 `json:",omitempty"`
	Idle      int64 `json:",omitempty"`
}

// Server is a running front door.
type Server struct {
	o       Options
	ln      net.Listener
	tls     *tls.Config
	mu      sync.Mutex
	perSrc  map[netip.Addr]int
	active  atomic.Int64
	served  atomic.Int64
	refused atomic.Int64
	plain   atomic.Int64
	over    atomic.Int64
	idle    atomic.Int64
	closing atomic.Bool
	// done is closed by Close; it ends the accept loop's wait to run
	// again after a panic.
	done    chan struct{}
	stop    sync.Once
	name    string // "front door <address>", for panic reports
	wg      sync.WaitGroup
	connsMu sync.Mutex
	conns   map[net.Conn]struct{}
}

// Listen starts listening; Serve accepts.
func Listen(o Options) (*Server, error) {
	if o.Protocol != Postgres && o.Protocol != TLS {
		return nil, fmt.Errorf("frontdoor: protocol %q", o.Protocol)
	}
	if o.TLS == nil || len(o.TLS.Certificates) == 0 && o.TLS.GetCertificate == nil {
		return nil, errors.New("frontdoor: no certificate")
	}
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.MaxPerSource == 0 {
		o.MaxPerSource = DefaultMaxPerSource
	}
	if o.MaxConns == 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if fit := FDBudget(); fit < o.MaxConns {
		o.MaxConns = fit
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg := o.TLS.Clone()
	if cfg.MinVersion < tls.VersionTLS12 {
		cfg.MinVersion = tls.VersionTLS12
	}
	if o.Protocol == Postgres {
		cfg.NextProtos = []string{"postgresql"}
	}
	ln := o.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", o.Addr); err != nil {
			return nil, fmt.Errorf("frontdoor: %w", err)
		}
	}
	return &Server{o: o, ln: ln, tls: cfg, perSrc: map[netip.Addr]int{}, conns: map[net.Conn]struct{}{},
		done: make(chan struct{}), name: "front door " + ln.Addr().String()}, nil
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{Active: s.active.Load(), Served: s.served.Load(), Refused: s.refused.Load(), Plaintext: s.plain.Load(),
		Limit: s.o.MaxConns, OverLimit: s.over.Load(), Idle: s.idle.Load()}
}

// FDBudget is how many proxied connections (two descriptors each) fit in
// the process's descriptor limit once FDReserve is kept back; at least 1.
// Several front doors in one process share it: give each its part.
func FDBudget() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return DefaultMaxConns
	}
	return max(1, (int(rl.Cur)-FDReserve)/2)
}

// Test hooks, nil outside tests: each runs at the start of its goroutine
// (testHookAccept at the start of the accept loop).
var testHookAccept, testHookHandle, testHookCopy func()

// Serve accepts until Close. Running out of descriptors (or any other
// temporary accept error) pauses the loop instead of ending it: the front
// door comes back once connections close. The front door runs in PID1,
// where a panic would bring the node down: a panic in the accept loop is
// reported and the loop runs again (after 1 s, doubling to 30 s while it
// keeps panicking); a panic in a connection's goroutines drops that
// connection only (docs/boot.md).
func (s *Server) Serve() error {
	return safego.Restart(s.name+" accept", s.done, s.accept)
}

func (s *Server) accept() error {
	if testHookAccept != nil {
		testHookAccept()
	}
	pause := 5 * time.Millisecond
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return nil
			}
			if temporary(err) {
				time.Sleep(pause)
				pause = min(2*pause, time.Second)
				continue
			}
			return fmt.Errorf("frontdoor: %w", err)
		}
		pause = 5 * time.Millisecond
		if s.active.Load() >= int64(s.o.MaxConns) {
			s.over.Add(1)
			s.refused.Add(1)
			c.Close()
			continue
		}
		src := addrOf(c.RemoteAddr())
		if !s.admit(src) {
			s.refused.Add(1)
			c.Close()
			continue
		}
		s.track(c, true)
		s.active.Add(1)
		s.wg.Add(1)
		// A panic here ends this goroutine only, after the deferred
		// calls have closed the connection and given back its counts.
		safego.Go(s.name+" connection", func() {
			defer s.wg.Done()
			defer s.active.Add(-1)
			defer s.release(src)
			defer s.track(c, false)
			defer c.Close()
			if testHookHandle != nil {
				testHookHandle()
			}
			s.handle(c)
		})
	}
}

// temporary reports accept errors after which accepting again can work:
// timeouts, a full descriptor table, a connection aborted before accept.
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) ||
		errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ECONNABORTED)
}

// Close stops accepting and closes every connection, the client's end and
// the workload's, so that no copy loop is left waiting on either: a client
// holding a query open cannot hold off the node's shutdown.
func (s *Server) Close() error {
	s.closing.Store(true)
	s.stop.Do(func() { close(s.done) })
	err := s.ln.Close()
	s.connsMu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.connsMu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) track(c net.Conn, add bool) {
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
}

func addrOf(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func (s *Server) admit(src netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perSrc[src] >= s.o.MaxPerSource {
		return false
	}
	s.perSrc[src]++
	return true
}

func (s *Server) release(src netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perSrc[src]--; s.perSrc[src] <= 0 {
		delete(s.perSrc, src)
	}
}

// bufConn is a connection whose first bytes were read through a buffer.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (s *Server) handle(c net.Conn) {
	c.SetDeadline(time.Now().Add(s.o.HandshakeTimeout))
	br := bufio.NewReaderSize(c, 4096)
	var tc *tls.Conn
	if s.o.Protocol == TLS {
		tc = tls.Server(&bufConn{c, br}, s.tls)
	} else {
		var ok bool
		if tc, ok = s.negotiatePostgres(c, br); !ok {
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.o.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.refused.Add(1)
		s.o.Log.Debug("front door: handshake failed", "from", c.RemoteAddr(), "err", err)
		return
	}
	if s.o.Protocol == Postgres && tc.ConnectionState().NegotiatedProtocol != "postgresql" && !s.viaSSLRequest(tc) {
		// Direct TLS needs ALPN "postgresql" (as PostgreSQL itself
		// requires), so that a TLS connection meant for another
		// protocol is not fed to the database.
		s.refused.Add(1)
		return
	}
	c.SetDeadline(time.Time{})
	back, err := s.dialBackend()
	if err != nil {
		s.o.Log.Warn("front door: the workload does not answer", "backend", s.o.Backend, "err", err)
		return
	}
	s.track(back, true)
	defer s.track(back, false)
	defer back.Close()
	if s.closing.Load() {
		return // Close ran between the dial and the track
	}
	s.served.Add(1)
	if idle := pipe(s.name+" copy", tc, back, s.o.IdleTimeout); idle {
		s.idle.Add(1)
	}
}

// viaSSLRequest marks connections that negotiated TLS with SSLRequest (no
// ALPN needed then).
func (s *Server) viaSSLRequest(tc *tls.Conn) bool {
	_, ok := tc.NetConn().(*sslRequested)
	return ok
}

type sslRequested struct{ bufConn }

// negotiatePostgres reads the client's first message: TLS right away
// (direct TLS), SSLRequest (answer 'S', then TLS), GSSENCRequest (answer
// 'N' and read on), or a plaintext startup (answer with an error).
func (s *Server) negotiatePostgres(c net.Conn, br *bufio.Reader) (*tls.Conn, bool) {
	for attempt := 0; attempt < 2; attempt++ {
		first, err := br.Peek(1)
		if err != nil {
			return nil, false
		}
		if first[0] == 0x16 { // a TLS handshake record: direct TLS
			return tls.Server(&bufConn{c, br}, s.tls), true
		}
		var hdr [8]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return nil, false
		}
		length := binary.BigEndian.Uint32(hdr[0:4])
		code := binary.BigEndian.Uint32(hdr[4:8])
		switch {
		case code == pgSSLRequest && length == 8:
			if br.Buffered() > 0 {
				// Bytes after SSLRequest before our answer: a
				// client trying to inject plaintext (CVE-2021-23214).
				s.refused.Add(1)
				return nil, false
			}
			if _, err := c.Write([]byte{'S'}); err != nil {
				return nil, false
			}
			return tls.Server(&sslRequested{bufConn{c, br}}, s.tls), true
		case code == pgGSSENCRequest && length == 8:
			if _, err := c.Write([]byte{'N'}); err != nil {
				return nil, false
			}
			continue
		case code == pgProtocol3 && length >= 8 && length <= pgMaxStartup:
			io.CopyN(io.Discard, br, int64(length-8))
			s.plain.Add(1)
			c.Write(pgError("FATAL", "28000", RequiredMessage))
			return nil, false
		default:
			// A plaintext cancel request, another protocol version, or
			// garbage: nothing to say to it.
			s.plain.Add(1)
			return nil, false
		}
	}
	return nil, false
}

// pgError encodes a PostgreSQL ErrorResponse message.
func pgError(severity, code, msg string) []byte {
	var body []byte
	for _, f := range []struct {
		t byte
		v string
	}{{'S', severity}, {'V', severity}, {'C', code}, {'M', msg}} {
		body = append(body, f.t)
		body = append(body, f.v...)
		body = append(body, 0)
	}
	body = append(body, 0)
	out := []byte{'E', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], uint32(len(body)+4))
	return append(out, body...)
}

func (s *Server) dialBackend() (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if p, ok := strings.CutPrefix(s.o.Backend, "unix:"); ok {
		return d.Dial("unix", p)
	}
	return d.Dial("tcp", s.o.Backend)
}

// pipe copies both ways until both directions are done, passing half
// closes on. A connection that carries no byte either way for idle is
// closed at both ends; pipe reports that. A panic in one direction's copy
// (name, for its report) closes both ends, so that the other direction
// ends too and the connection is dropped.
func pipe(name string, client *tls.Conn, back net.Conn, idle time.Duration) (timedOut bool) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{}, 2)
	half := func(fn func()) {
		go func() {
			err := safego.Call(name, func() error {
				if testHookCopy != nil {
					testHookCopy()
				}
				fn()
				return nil
			})
			if err != nil {
				client.Close()
				back.Close()
			}
			done <- struct{}{}
		}()
	}
	half(func() {
		copyActive(back, client, &last)
		if cw, ok := back.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			back.Close()
		}
	})
	half(func() {
		copyActive(client, back, &last)
		client.CloseWrite()
	})
	tick := time.NewTicker(max(idle/8, time.Millisecond))
	defer tick.Stop()
	for pending := 2; pending > 0; {
		select {
		case <-done:
			pending--
		case <-tick.C:
			if !timedOut && time.Since(time.Unix(0, last.Load())) >= idle {
				timedOut = true
				client.Close()
				back.Close()
			}
		}
	}
	return timedOut
}

// copyActive copies src to dst, noting the time of every transfer in last.
func copyActive(dst io.Writer, src io.Reader, last *atomic.Int64) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			last.Store(time.Now().UnixNano())
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			last.Store(time.Now().UnixNano())
		}
		if err != nil {
			return
		}
	}
}
