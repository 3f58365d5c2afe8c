// Package mgmt is the node's management API: HTTPS with mutual TLS on the
// management port, for management clients holding a certificate of the
// project CA with a role. Every request, allowed or refused, and every
// refused handshake goes into the audit log. It is the only control path
// into a node: there is no shell, no sshd and no console login. The API is
// described in docs/management.md.
package mgmt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

// ErrNotAvailable answers actions whose subsystem this node does not run.
var ErrNotAvailable = errors.New("not available on this node")

// ErrBusy answers an action that is already under way.
var ErrBusy = errors.New("busy")

// Node is what the API acts on; the init implements it.
type Node interface {
	Status() any
	Allowlist() []string
	SetAllowlist(entries []string) (warning string, err error)
	Backup() error
	Rekey() error
	// Attest returns a TPM quote over the caller's nonce (16 to 64
	// bytes); ErrNotAvailable without a TPM.
	Attest(nonce []byte) (any, error)
	Shutdown(reason string)
}

// Options configure the server.
type Options struct {
	Addr    string
	CA      *x509.Certificate
	Cert    tls.Certificate
	Revoked []string
	Audit   *audit.Log
	Node    Node
	Log     *slog.Logger
	// now is the clock for certificate validity (tests).
	now func() time.Time
}

// route is one API call and the roles that may make it.
type route struct {
	method, path string
	roles        []string
}

var (
	both        = []string{pki.RoleOperator, pki.RoleControlPlane}
	controlOnly = []string{pki.RoleControlPlane}
	routes      = []route{
		{"GET", "/v1/status", both},
		{"GET", "/v1/allowlist", both},
		{"PUT", "/v1/allowlist", controlOnly},
		{"GET", "/v1/audit", both},
		{"POST", "/v1/attest", both},
		{"POST", "/v1/backup", controlOnly},
		{"POST", "/v1/ipsec/rekey", controlOnly},
		{"POST", "/v1/shutdown", controlOnly},
	}
)

// Server is a running management API.
type Server struct {
	o     Options
	ln    net.Listener
	conns chan net.Conn
	http  *http.Server
	tls   *tls.Config
	done  chan struct{}
	once  sync.Once
}

// Listen starts listening.
func Listen(o Options) (*Server, error) {
	if o.CA == nil || o.Audit == nil || o.Node == nil {
		return nil, errors.New("mgmt: CA, audit log and node are required")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.now == nil {
		o.now = time.Now
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("mgmt: %w", err)
	}
	s := &Server{o: o, ln: ln, conns: make(chan net.Conn), done: make(chan struct{})}
	s.tls = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{o.Cert},
		// The chain is verified in verifyClient, against the project CA
		// only, so that every refusal can be audited with its reason.
		ClientAuth: tls.RequireAnyClientCert,
	}
	mux := http.NewServeMux()
	for _, rt := range routes {
		mux.HandleFunc(rt.method+" "+rt.path, s.guard(rt))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.record(r, "404 no such call")
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such call: " + r.Method + " " + r.URL.Path})
	})
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve handshakes every connection itself (to audit refusals) and hands
// the good ones to the HTTP server.
func (s *Server) Serve() error {
	go s.http.Serve(chanListener{s})
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("mgmt: %w", err)
		}
		go s.handshake(c)
	}
}

// Close stops the server.
func (s *Server) Close() error {
	s.once.Do(func() { close(s.done) })
	err := s.ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.http.Shutdown(ctx)
	return err
}

func (s *Server) handshake(c net.Conn) {
	var peer *x509.Certificate
	cfg := s.tls.Clone()
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no client certificate")
		}
		peer = cs.PeerCertificates[0]
		if err := pki.Verify(s.o.CA, peer, x509.ExtKeyUsageClientAuth, s.o.Revoked, s.o.now()); err != nil {
			return err
		}
		if r := pki.Role(peer); r != pki.RoleOperator && r != pki.RoleControlPlane {
			return fmt.Errorf("the certificate carries no management role")
		}
		return nil
	}
	tc := tls.Server(c, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		who, serial := c.RemoteAddr().String(), ""
		if peer != nil {
			who, serial = peer.Subject.String()+" from "+who, pki.SerialHex(peer)
		}
		reason := err.Error()
		if strings.Contains(reason, "didn't provide a certificate") || strings.Contains(reason, "no client certificate") {
			reason = "no client certificate"
		}
		s.o.Audit.Append(audit.KindRequest, who, serial, "management TLS handshake", "refused: "+reason)
		c.Close()
		return
	}
	select {
	case s.conns <- tc:
	case <-s.done:
		tc.Close()
	}
}

// chanListener feeds handshaken connections to the HTTP server.
type chanListener struct{ s *Server }

func (l chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.s.conns:
		return c, nil
	case <-l.s.done:
		return nil, net.ErrClosed
	}
}
func (l chanListener) Close() error   { return nil }
func (l chanListener) Addr() net.Addr { return l.s.ln.Addr() }

func caller(r *http.Request) (*x509.Certificate, string) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, ""
	}
	c := r.TLS.PeerCertificates[0]
	return c, pki.Role(c)
}

// record audits one request with its result.
func (s *Server) record(r *http.Request, result string) {
	c, role := caller(r)
	who, serial := r.RemoteAddr, ""
	if c != nil {
		who, serial = c.Subject.String()+" ("+role+") from "+r.RemoteAddr, pki.SerialHex(c)
	}
	s.o.Audit.Append(audit.KindRequest, who, serial, r.Method+" "+r.URL.Path+detail(r), result)
}

// detail adds what a changing request asked for to its audit record.
func detail(r *http.Request) string {
	if v, ok := r.Context().Value(detailKey{}).(string); ok && v != "" {
		return " " + v
	}
	return ""
}

type detailKey struct{}

func (s *Server) guard(rt route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, role := caller(r)
		if !slices.Contains(rt.roles, role) {
			s.record(r, fmt.Sprintf("403 refused: role %q may not do this", role))
			writeJSON(w, http.StatusForbidden, map[string]string{"error": fmt.Sprintf("role %q may not %s %s", role, rt.method, rt.path)})
			return
		}
		code, body, note := s.serve(rt, r)
		if note != "" {
			r = r.WithContext(context.WithValue(r.Context(), detailKey{}, note))
		}
		result := fmt.Sprintf("%d", code)
		if e, ok := body.(map[string]string); ok && e["error"] != "" {
			result += " " + e["error"]
		} else {
			result += " ok"
		}
		s.record(r, result)
		if snap, ok := body.(auditSnapshot); ok {
			// The head is the snapshot's, not the log's now: this very
			// request has been recorded after it.
			w.Header().Set("X-Bulwark-Audit-Head", snap.head)
			w.Header().Set("X-Bulwark-Audit-Records", fmt.Sprint(snap.n))
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(code)
			w.Write(snap.b)
			return
		}
		writeJSON(w, code, body)
	}
}

// serve runs one allowed call: status code, body, and a note for the
// audit record.
func (s *Server) serve(rt route, r *http.Request) (int, any, string) {
	fail := func(code int, err error) (int, any, string) {
		return code, map[string]string{"error": err.Error()}, ""
	}
	switch rt.method + " " + rt.path {
	case "GET /v1/status":
		return 200, s.o.Node.Status(), ""
	case "POST /v1/attest":
		var req struct {
			Nonce string `json:"nonce"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return fail(400, fmt.Errorf("body: %w", err))
		}
		nonce, err := hex.DecodeString(req.Nonce)
		if err != nil || len(nonce) < 16 || len(nonce) > 64 {
			return fail(400, errors.New("nonce: give 16 to 64 bytes as hex"))
		}
		q, err := s.o.Node.Attest(nonce)
		if errors.Is(err, ErrNotAvailable) {
			return fail(501, err)
		}
		if err != nil {
			return fail(500, err)
		}
		return 200, q, ""
	case "GET /v1/allowlist":
		return 200, map[string][]string{"clients": s.o.Node.Allowlist()}, ""
	case "PUT /v1/allowlist":
		var req struct {
			Clients []string `json:"clients"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 8<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return fail(400, fmt.Errorf("request body: %w", err))
		}
		if req.Clients == nil {
			return fail(400, errors.New(`request body: "clients" is required (an empty list admits no client)`))
		}
		note := summarise(req.Clients)
		warning, err := s.o.Node.SetAllowlist(req.Clients)
		if err != nil {
			code, body, _ := fail(400, err)
			return code, body, note
		}
		out := map[string]any{"clients": s.o.Node.Allowlist()}
		if warning != "" {
			out["warning"] = warning
		}
		return 200, out, note
	case "GET /v1/audit":
		b, head, n := s.o.Audit.Snapshot()
		return 200, auditSnapshot{b, head, n}, ""
	case "POST /v1/backup":
		if err := s.o.Node.Backup(); err != nil {
			if errors.Is(err, ErrBusy) {
				return fail(409, err)
			}
			return fail(501, err)
		}
		return 202, map[string]string{"result": "backup started"}, ""
	case "POST /v1/ipsec/rekey":
		if err := s.o.Node.Rekey(); err != nil {
			return fail(501, err)
		}
		return 202, map[string]string{"result": "rekey started"}, ""
	case "POST /v1/shutdown":
		var req struct {
			Wipe bool `json:"wipe"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || !req.Wipe {
			return fail(400, errors.New(`send {"wipe": true}: a node only ever shuts down by wiping its volumes`))
		}
		c, _ := caller(r)
		go func() {
			// Let the answer reach the caller first.
			time.Sleep(200 * time.Millisecond)
			s.o.Node.Shutdown("management API, by " + c.Subject.String())
		}()
		return 202, map[string]string{"result": "shutting down; the volumes will be crypto-erased"}, ""
	}
	return fail(404, errors.New("no such call"))
}

// auditSnapshot is the log as served, with its head.
type auditSnapshot struct {
	b    []byte
	head string
	n    uint64
}

func summarise(entries []string) string {
	if len(entries) <= 8 {
		return "[" + strings.Join(entries, " ") + "]"
	}
	return fmt.Sprintf("[%s ... %d entries]", strings.Join(entries[:8], " "), len(entries))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
