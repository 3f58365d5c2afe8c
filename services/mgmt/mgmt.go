// Package mgmt is the management API's own process: it terminates the
// operators' mutual TLS with the node's certificate, checks their
// certificates and roles (internal/mgmt), and asks PID1 for every action
// and every audit record over the control socket (internal/control). It
// runs as its own uid with no capabilities, confined before it accepts a
// connection: it can read no file and change nothing on the node itself.
// PID1 validates each request again: the firewall checks the allowlist,
// the TPM the nonce, and the audit log is PID1's.
package mgmt

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/control"
	api "github.com/bulwarkvm/bulwark/internal/mgmt"
	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/internal/safego"
	"github.com/bulwarkvm/bulwark/internal/sandbox"
	"github.com/bulwarkvm/bulwark/services/service"
)

// Operations the management API's process asks PID1 for.
const (
	OpConfig       = "mgmt.config"
	OpStatus       = "node.status"
	OpAllowlist    = "node.allowlist"
	OpSetAllowlist = "node.set_allowlist"
	OpBackup       = "node.backup"
	OpRekey        = "node.rekey"
	OpAttest       = "node.attest"
	OpShutdown     = "node.shutdown"
	OpTestHook     = "node.test_hook"
	OpAuditAppend  = "audit.append"
	OpAuditFinish  = "audit.finish"
	OpAuditView    = "audit.view"
)

// Config is the answer to OpConfig.
type Config struct {
	Port    int      `json:"port"`
	CAPEM   []byte   `json:"ca_pem"`
	CertPEM []byte   `json:"cert_pem"`
	KeyPEM  []byte   `json:"key_pem"`
	Revoked []string `json:"revoked_serials"`
}

// Outcome is PID1's answer to an action: an error, with its kind, goes in
// the answer rather than as a protocol error, so that the API can tell
// "not available" (501) and "busy" (409) from a failure.
type Outcome struct {
	Result  json.RawMessage `json:"result,omitempty"`
	Warning string          `json:"warning,omitempty"`
	Error   string          `json:"error,omitempty"`
	Kind    string          `json:"kind,omitempty"` // "not_available", "busy"
}

// Error kinds of an Outcome.
const (
	KindNotAvailable = "not_available"
	KindBusy         = "busy"
)

// OutcomeOf encodes err (nil for success) with its kind.
func OutcomeOf(result any, warning string, err error) (Outcome, error) {
	o := Outcome{Warning: warning}
	if err != nil {
		o.Error = err.Error()
		switch {
		case errors.Is(err, api.ErrNotAvailable):
			o.Kind = KindNotAvailable
		case errors.Is(err, api.ErrBusy):
			o.Kind = KindBusy
		}
		return o, nil
	}
	if result != nil {
		b, err := json.Marshal(result)
		if err != nil {
			return o, err
		}
		o.Result = b
	}
	return o, nil
}

func (o Outcome) err() error {
	if o.Error == "" {
		return nil
	}
	switch o.Kind {
	case KindNotAvailable:
		return fmt.Errorf("%s: %w", o.Error, api.ErrNotAvailable)
	case KindBusy:
		return fmt.Errorf("%s: %w", o.Error, api.ErrBusy)
	}
	return errors.New(o.Error)
}

// AuditArgs is a record to append (OpAuditAppend; Result "started" for
// the first record of a call).
type AuditArgs struct {
	Kind   string `json:"kind"`
	Who    string `json:"who"`
	Serial string `json:"serial"`
	What   string `json:"what"`
	Result string `json:"result"`
}

// FinishArgs ends a started call's record pair (OpAuditFinish).
type FinishArgs struct {
	Started audit.Record `json:"started"`
	Result  string       `json:"result"`
}

// ViewMeta comes with the read-only descriptor of OpAuditView.
type ViewMeta struct {
	Start audit.Anchor `json:"start"`
	Head  string       `json:"head"`
	Seq   uint64       `json:"seq"`
	Size  int64        `json:"size"`
}

// TestHookArgs names a test hook (test image only).
type TestHookArgs struct {
	Service string `json:"service"`
	Hook    string `json:"hook"`
}

// Syscalls are what the management API calls beyond the Go runtime's.
var Syscalls = []string{"accept4", "socket", "getsockopt", "setsockopt", "memfd_create"}

// callTimeout bounds every request to PID1.
const callTimeout = 30 * time.Second

// Main runs the management API; ctl is the control socket, files[0] the
// listening socket.
func Main(ctl *os.File, files []*os.File) int {
	var cfg Config
	proc, err := service.Start(ctl, nil, OpConfig, &cfg)
	if err != nil {
		return 1
	}
	log, peer := proc.Log, proc.Peer
	cert, err := tls.X509KeyPair(cfg.CertPEM, cfg.KeyPEM)
	clear(cfg.KeyPEM)
	if err != nil {
		log.Error("the node's certificate", "err", err)
		return 1
	}
	ca, err := pki.ParseCertificate(cfg.CAPEM)
	if err != nil {
		log.Error("the project CA", "err", err)
		return 1
	}
	ln, err := service.Listener(files, "listening socket")
	if err != nil {
		log.Error(err.Error())
		return 1
	}
	rep, err := proc.Confine(sandbox.Policy{Syscalls: Syscalls})
	if err != nil {
		return 1
	}
	remote := &remote{peer: peer}
	s, err := api.Listen(api.Options{Listener: ln, CA: ca, Cert: cert, Revoked: cfg.Revoked,
		Audit: remote, Node: remoteNode{remote}, Log: log})
	if err != nil {
		log.Error("management API", "err", err)
		return 1
	}
	safego.Go("management API", func() {
		if err := s.Serve(); err != nil {
			log.Error("management API stopped", "err", err)
			os.Exit(1) // PID1 restarts the process
		}
	})
	if proc.Ready(rep) != nil {
		return 1
	}
	log.Info("serving", "port", cfg.Port)
	proc.Wait()
	return 0
}

// remote is PID1's audit log and node, through the control socket.
type remote struct{ peer *control.Peer }

func (r *remote) call(op string, args, result any) ([]*os.File, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return r.peer.Call(ctx, op, args, result)
}

func (r *remote) Append(kind, who, serial, what, result string) (audit.Record, error) {
	var rec audit.Record
	_, err := r.call(OpAuditAppend, AuditArgs{kind, who, serial, what, result}, &rec)
	return rec, err
}

func (r *remote) Start(kind, who, serial, what string) (audit.Record, error) {
	return r.Append(kind, who, serial, what, audit.ResultStarted)
}

func (r *remote) Finish(started audit.Record, result string) (audit.Record, error) {
	var rec audit.Record
	_, err := r.call(OpAuditFinish, FinishArgs{started, result}, &rec)
	return rec, err
}

func (r *remote) Snapshot() (*audit.View, error) {
	var m ViewMeta
	fds, err := r.call(OpAuditView, nil, &m)
	if err != nil {
		return nil, err
	}
	if len(fds) != 1 {
		for _, f := range fds {
			f.Close()
		}
		return nil, fmt.Errorf("audit view: %d descriptors, want 1", len(fds))
	}
	return audit.ViewOf(m.Start, m.Head, m.Seq, m.Size, fds[0]), nil
}

// remoteNode is api.Node through PID1.
type remoteNode struct{ r *remote }

func (n remoteNode) action(op string, args, result any) (string, error) {
	var o Outcome
	if _, err := n.r.call(op, args, &o); err != nil {
		return "", err
	}
	if err := o.err(); err != nil {
		return "", err
	}
	if result != nil && len(o.Result) > 0 {
		if err := json.Unmarshal(o.Result, result); err != nil {
			return "", err
		}
	}
	return o.Warning, nil
}

func (n remoteNode) Status() any {
	var st json.RawMessage
	if _, err := n.action(OpStatus, nil, &st); err != nil {
		return map[string]string{"error": "status from PID1: " + err.Error()}
	}
	return st
}

func (n remoteNode) Allowlist() []string {
	var l []string
	n.action(OpAllowlist, nil, &l)
	return l
}

// SetAllowlist passes the entries in a memfd: a long list is larger than
// one control message.
func (n remoteNode) SetAllowlist(entries []string) (string, error) {
	body, err := json.Marshal(entries)
	if err != nil {
		return "", err
	}
	fd, err := unix.MemfdCreate("allowlist", unix.MFD_CLOEXEC)
	if err != nil {
		return "", fmt.Errorf("allowlist: %w", err)
	}
	f := os.NewFile(uintptr(fd), "allowlist")
	defer f.Close()
	if _, err := f.Write(body); err != nil {
		return "", fmt.Errorf("allowlist: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	var o Outcome
	fds, err := n.r.peer.CallFDs(ctx, OpSetAllowlist, nil, []*os.File{f}, &o)
	for _, x := range fds {
		x.Close()
	}
	if err != nil {
		return "", err
	}
	return o.Warning, o.err()
}

func (n remoteNode) Backup() error { _, err := n.action(OpBackup, nil, nil); return err }
func (n remoteNode) Rekey() error  { _, err := n.action(OpRekey, nil, nil); return err }

func (n remoteNode) Attest(nonce []byte) (any, error) {
	var q json.RawMessage
	_, err := n.action(OpAttest, nonce, &q)
	return q, err
}

func (n remoteNode) Shutdown(reason string) { n.action(OpShutdown, reason, nil) }

// TestHook passes a test hook on to PID1 (only the test image's PID1
// answers it).
func (n remoteNode) TestHook(service, hook string) (any, error) {
	var res json.RawMessage
	_, err := n.action(OpTestHook, TestHookArgs{service, hook}, &res)
	return res, err
}
