// Package mgmt is the node's management API: HTTPS with mutual TLS on the
// management port, for management clients holding a certificate of the
// project CA with a role. Every request, allowed or refused, goes into the
// audit log before anything is done for it, and its result after; a
// request that cannot be recorded is refused. Refused handshakes are
// recorded too, at a bounded rate per source. It is the only control path
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

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/internal/safego"
)

// ErrNotAvailable answers actions whose subsystem this node does not run.
var ErrNotAvailable = errors.New("not available on this node")

// maxHandshakes bounds the management TLS handshakes under way at once.
const maxHandshakes = 256

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

// AuditLog is where the API records every call: the node's *audit.Log in
// PID1, or, in the management API's own process, PID1's log reached
// through the control socket.
type AuditLog interface {
	Append(kind, who, serial, what, result string) (audit.Record, error)
	Start(kind, who, serial, what string) (audit.Record, error)
	Finish(started audit.Record, result string) (audit.Record, error)
	Snapshot() (*audit.View, error)
}

// Options configure the server.
type Options struct {
	Addr string
	// Listener, when set, is used instead of listening on Addr (the
	// management API's process gets its socket from PID1).
	Listener net.Listener
	CA       *x509.Certificate
	Cert     tls.Certificate
	Revoked  []string
	Audit    AuditLog
	Node     Node
	Log      *slog.Logger
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
	// refused limits the records of refused handshakes; flushed is
	// closed when the goroutine that writes their counts has ended.
	refused *refusals
	// inflight bounds the handshakes under way.
	inflight chan struct{}
	flushed  chan struct{}
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
	ln := o.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", o.Addr); err != nil {
			return nil, fmt.Errorf("mgmt: %w", err)
		}
	}
	s := &Server{o: o, ln: ln, conns: make(chan net.Conn), done: make(chan struct{}),
		refused: newRefusals(o.now), flushed: make(chan struct{}), inflight: make(chan struct{}, maxHandshakes)}
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
		if s.record(w, r, "404 no such call") {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such call: " + r.Method + " " + r.URL.Path})
		}
	})
	s.http = &http.Server{
		Handler:           reported(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn),
	}
	// Started here, not in Serve, so that Close always finds it.
	go s.flushRefusals()
	return s, nil
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Test hooks, nil outside tests: each runs at the start of its goroutine
// (testHookAccept and testHookFlush at the start of their loops,
// testHookRequest at the start of every request's handler).
var testHookAccept, testHookHandshake, testHookFlush, testHookRequest func()

// Names of the server's goroutines in panic reports.
const (
	nameAccept    = "management API accept"
	nameHTTP      = "management API HTTP server"
	nameHandshake = "management API handshake"
	nameRequest   = "management API request"
	nameRefusals  = "management API refusal counts"
	nameShutdown  = "management API shutdown"
)

// Serve handshakes every connection itself (to audit refusals) and hands
// the good ones to the HTTP server. The server runs in PID1, where a panic
// would bring the node down: a panic in the accept loop is reported and
// the loop runs again (after 1 s, doubling to 30 s while it keeps
// panicking); one in a handshake or a request drops that connection only
// (docs/boot.md).
func (s *Server) Serve() error {
	safego.Loop(nameHTTP, s.done, func() { s.http.Serve(chanListener{s}) })
	return safego.Restart(nameAccept, s.done, s.accept)
}

func (s *Server) accept() error {
	if testHookAccept != nil {
		testHookAccept()
	}
	pause := 5 * time.Millisecond
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return nil
			default:
			}
			// Out of descriptors (a flood elsewhere in the process) or
			// another passing error: wait and accept again, never end
			// the only way into the node.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) ||
				errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ECONNABORTED) {
				time.Sleep(pause)
				pause = min(2*pause, time.Second)
				continue
			}
			return fmt.Errorf("mgmt: %w", err)
		}
		pause = 5 * time.Millisecond
		// At most maxHandshakes at once: each holds a descriptor for up
		// to the handshake timeout, and the firewall admits every
		// management source.
		select {
		case s.inflight <- struct{}{}:
		default:
			c.Close()
			continue
		}
		go func() {
			defer func() { <-s.inflight }()
			// After a panic the connection is closed here: nothing
			// else holds it yet.
			if safego.Call(nameHandshake, func() error { s.handshake(c); return nil }) != nil {
				c.Close()
			}
		}()
	}
}

// reported wraps the API's handler: a panic in a request is reported,
// then ends the request's connection as net/http does for any handler
// panic (http.ErrAbortHandler, so that it does not log the stack twice).
func reported(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v != http.ErrAbortHandler {
					safego.Recovered(nameRequest, v)
				}
				panic(http.ErrAbortHandler)
			}
		}()
		if testHookRequest != nil {
			testHookRequest()
		}
		h.ServeHTTP(w, r)
	})
}

// Close stops the server.
func (s *Server) Close() error {
	first := false
	s.once.Do(func() { close(s.done); first = true })
	err := s.ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.http.Shutdown(ctx)
	if first {
		select {
		case <-s.flushed:
		case <-ctx.Done():
		}
	}
	return err
}

// flushRefusals writes the counts of suppressed handshake refusals now
// and then, and once more when the server closes. A panic in the loop is
// reported and the loop runs again; the last counts are written when the
// server closes all the same.
func (s *Server) flushRefusals() {
	defer close(s.flushed)
	safego.Restart(nameRefusals, s.done, func() error { s.flushEvery(); return nil })
	safego.Call(nameRefusals, func() error { s.writeCounts(s.refused.drain()); return nil })
}

// flushEvery writes the counts every refusalFlushEvery until the server
// closes.
func (s *Server) flushEvery() {
	if testHookFlush != nil {
		testHookFlush()
	}
	t := time.NewTicker(refusalFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.writeCounts(s.refused.drain())
		case <-s.done:
			return
		}
	}
}

func (s *Server) writeCounts(cs []count) {
	for _, c := range cs {
		if _, err := s.o.Audit.Append(audit.KindRequest, c.src, "", "management TLS handshake", c.result()); err != nil {
			s.o.Log.Error("audit: the count of suppressed handshake refusals was not recorded", "source", c.src, "count", c.n, "err", err)
		}
	}
}

func (s *Server) handshake(c net.Conn) {
	if testHookHandshake != nil {
		testHookHandshake()
	}
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
		// The connection is refused whether or not the record is written.
		c.Close()
		ok, suppressed := s.refused.allow(source(c.RemoteAddr()))
		if suppressed != nil {
			s.writeCounts([]count{*suppressed})
		}
		if ok {
			if _, err := s.o.Audit.Append(audit.KindRequest, who, serial, "management TLS handshake", "refused: "+reason); err != nil {
				s.o.Log.Error("audit: a refused management handshake was not recorded", "who", who, "err", err)
			}
		}
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

// callerName names the caller of r for its audit record, with the
// certificate's serial.
func callerName(r *http.Request) (string, string) {
	c, role := caller(r)
	if c == nil {
		return r.RemoteAddr, ""
	}
	return c.Subject.String() + " (" + role + ") from " + r.RemoteAddr, pki.SerialHex(c)
}

// what names the call, with what a changing request asks for (note).
func what(r *http.Request, note string) string {
	if note != "" {
		return r.Method + " " + r.URL.Path + " " + note
	}
	return r.Method + " " + r.URL.Path
}

// record audits a request refused before anything was done for it, as
// one record with its result. When the record cannot be written it
// answers 503 itself and returns false.
func (s *Server) record(w http.ResponseWriter, r *http.Request, result string) bool {
	who, serial := callerName(r)
	if _, err := s.o.Audit.Append(audit.KindRequest, who, serial, what(r, ""), result); err != nil {
		s.unaudited(w, err, "")
		return false
	}
	return true
}

// unaudited answers a request whose audit record could not be written:
// the API fails closed. ran is the result of an action that did run (its
// "started" record is in the log), empty when nothing was done.
func (s *Server) unaudited(w http.ResponseWriter, err error, ran string) {
	msg := fmt.Sprintf("the audit log cannot record this request (%v): it was not carried out", err)
	if ran != "" {
		msg = fmt.Sprintf("the audit log cannot record this request's result (%v): it ran (%s), and its answer is withheld", err, ran)
	}
	s.o.Log.Error("mgmt: " + msg)
	writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": msg})
}

// result is the audit record's result for an answer.
func result(code int, body any) string {
	if e, ok := body.(map[string]string); ok && e["error"] != "" {
		return fmt.Sprintf("%d %s", code, e["error"])
	}
	return fmt.Sprintf("%d ok", code)
}

// guard runs one call: the role check, the input, then the action between
// a "started" record (who asked for what) and one with its result. Only
// when the first is written does the action run; only when the second is
// written does the caller get the answer.
func (s *Server) guard(rt route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, role := caller(r)
		if !slices.Contains(rt.roles, role) {
			if s.record(w, r, fmt.Sprintf("403 refused: role %q may not do this", role)) {
				writeJSON(w, http.StatusForbidden, map[string]string{"error": fmt.Sprintf("role %q may not %s %s", role, rt.method, rt.path)})
			}
			return
		}
		c, code, body := s.prepare(rt, r)
		if c == nil {
			// Bad input: refused, and nothing was done.
			if s.record(w, r, result(code, body)) {
				writeJSON(w, code, body)
			}
			return
		}
		who, serial := callerName(r)
		started, err := s.o.Audit.Start(audit.KindRequest, who, serial, what(r, c.note))
		if err != nil {
			s.unaudited(w, err, "")
			return
		}
		ended := false
		defer func() {
			if ended {
				return
			}
			// The action panicked: its end goes into the log, then
			// net/http handles the panic as before (it ends the
			// connection).
			v := recover()
			if v == nil {
				return
			}
			if _, err := s.o.Audit.Finish(started, fmt.Sprintf("500 panic: %.200v", v)); err != nil {
				s.o.Log.Error("audit: a panicking request's end was not recorded", "err", err)
			}
			panic(v)
		}()
		code, body, then := c.run()
		ended = true
		if v, ok := body.(*audit.View); ok {
			defer v.Close()
		}
		res := result(code, body)
		if _, err := s.o.Audit.Finish(started, res); err != nil {
			s.unaudited(w, err, res)
			return
		}
		if then != nil {
			then()
		}
		if v, ok := body.(*audit.View); ok {
			// The copy ends with this request's started record: its
			// result was written after the copy was taken. Start says
			// where the copy begins (not at genesis when the node has no
			// audit file and its memory dropped the oldest records).
			h := w.Header()
			h.Set("X-Bulwark-Audit-Head", v.Head)
			h.Set("X-Bulwark-Audit-Records", fmt.Sprint(v.Seq+1-v.Start.Seq))
			h.Set("X-Bulwark-Audit-Start", fmt.Sprint(v.Start.Seq))
			h.Set("X-Bulwark-Audit-Start-Prev", v.Start.Prev)
			h.Set("Content-Type", "application/x-ndjson")
			h.Set("Content-Length", fmt.Sprint(v.Size))
			w.WriteHeader(code)
			if _, err := io.Copy(w, v); err != nil {
				s.o.Log.Warn("mgmt: sending the audit log", "err", err)
			}
			return
		}
		writeJSON(w, code, body)
	}
}

// call is an allowed request whose input has been read and checked, not
// yet acted on: note says what it asks for (for its audit records), run
// does it. then, when run returns one, runs once the result is recorded.
type call struct {
	note string
	run  func() (code int, body any, then func())
}

// prepare reads and checks an allowed call's input. Bad input gets its
// answer (code and body) and no call.
func (s *Server) prepare(rt route, r *http.Request) (*call, int, any) {
	bad := func(err error) (*call, int, any) {
		return nil, 400, map[string]string{"error": err.Error()}
	}
	fail := func(code int, err error) (int, any, func()) {
		return code, map[string]string{"error": err.Error()}, nil
	}
	do := func(note string, run func() (int, any, func())) (*call, int, any) {
		return &call{note: note, run: run}, 0, nil
	}
	switch rt.method + " " + rt.path {
	case "GET /v1/status":
		return do("", func() (int, any, func()) { return 200, s.o.Node.Status(), nil })
	case "POST /v1/attest":
		var req struct {
			Nonce string `json:"nonce"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return bad(fmt.Errorf("body: %w", err))
		}
		nonce, err := hex.DecodeString(req.Nonce)
		if err != nil || len(nonce) < 16 || len(nonce) > 64 {
			return bad(errors.New("nonce: give 16 to 64 bytes as hex"))
		}
		return do("", func() (int, any, func()) {
			q, err := s.o.Node.Attest(nonce)
			if errors.Is(err, ErrNotAvailable) {
				return fail(501, err)
			}
			if err != nil {
				return fail(500, err)
			}
			return 200, q, nil
		})
	case "GET /v1/allowlist":
		return do("", func() (int, any, func()) {
			return 200, map[string][]string{"clients": s.o.Node.Allowlist()}, nil
		})
	case "PUT /v1/allowlist":
		var req struct {
			Clients []string `json:"clients"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 8<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return bad(fmt.Errorf("request body: %w", err))
		}
		if req.Clients == nil {
			return bad(errors.New(`request body: "clients" is required (an empty list admits no client)`))
		}
		return do(summarise(req.Clients), func() (int, any, func()) {
			warning, err := s.o.Node.SetAllowlist(req.Clients)
			if err != nil {
				return fail(400, err)
			}
			out := map[string]any{"clients": s.o.Node.Allowlist()}
			if warning != "" {
				out["warning"] = warning
			}
			return 200, out, nil
		})
	case "GET /v1/audit":
		return do("", func() (int, any, func()) {
			v, err := s.o.Audit.Snapshot()
			if err != nil {
				return fail(500, err)
			}
			return 200, v, nil
		})
	case "POST /v1/backup":
		return do("", func() (int, any, func()) {
			if err := s.o.Node.Backup(); err != nil {
				if errors.Is(err, ErrBusy) {
					return fail(409, err)
				}
				return fail(501, err)
			}
			return 202, map[string]string{"result": "backup started"}, nil
		})
	case "POST /v1/ipsec/rekey":
		return do("", func() (int, any, func()) {
			if err := s.o.Node.Rekey(); err != nil {
				return fail(501, err)
			}
			return 202, map[string]string{"result": "rekey started"}, nil
		})
	case "POST /v1/shutdown":
		var req struct {
			Wipe bool `json:"wipe"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || !req.Wipe {
			return bad(errors.New(`send {"wipe": true}: a node only ever shuts down by wiping its volumes`))
		}
		c, _ := caller(r)
		return do("", func() (int, any, func()) {
			// The shutdown starts only once its result is recorded, and
			// a moment later, so that the answer reaches the caller.
			return 202, map[string]string{"result": "shutting down; the volumes will be crypto-erased"}, func() {
				safego.Go(nameShutdown, func() {
					time.Sleep(200 * time.Millisecond)
					s.o.Node.Shutdown("management API, by " + c.Subject.String())
				})
			}
		})
	}
	if c, code, body, ok := s.prepareTest(rt, r); ok {
		return c, code, body
	}
	return nil, 404, map[string]string{"error": "no such call"}
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
