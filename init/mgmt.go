package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/control"
	msvc "github.com/bulwarkvm/bulwark/services/mgmt"
)

// The management API's process: uid and gid of its own, no capabilities.
const mgmtUID = 61002

// Bounds on what the management API's process may send.
const (
	maxAuditField    = 4096
	maxPendingCalls  = 1024
	maxAllowlistJSON = 8 << 20
	maxReason        = 512
)

// startManagement starts the management API as a supervised process of
// its own. PID1 binds the management port and passes it in; the process
// asks PID1 for every action and every audit record, and PID1 checks
// each request as untrusted input: the audit records it may write are
// management-call records only, a call's result only for a call PID1
// recorded as started, the audit log reaches it read-only.
func (b *boot) startManagement(port int) (*service, error) {
	s := &service{
		name: "mgmt", uid: mgmtUID, gid: mgmtUID, handlers: b.mgmtHandlers(port),
		files: func() ([]*os.File, error) {
			var lc net.ListenConfig
			ln, err := lc.Listen(context.Background(), "tcp", fmt.Sprintf(":%d", port))
			if err != nil {
				return nil, fmt.Errorf("management API on port %d: %w", port, err)
			}
			f, err := ln.(*net.TCPListener).File()
			ln.Close()
			if err != nil {
				return nil, err
			}
			return []*os.File{f}, nil
		},
	}
	if err := b.supervise(s, 30*time.Second); err != nil {
		return nil, fmt.Errorf("services: %w", err)
	}
	b.services = append(b.services, s)
	b.onShutdownWithin("stop service mgmt", 5*time.Second, false, s.stopService)
	b.notes = append(b.notes, s.status().summary())
	return s, nil
}

// mgmtHandlers are the operations the management API's process may ask
// PID1 for.
func (b *boot) mgmtHandlers(port int) map[string]control.Handler {
	t := b.cfg.TLS
	var mu sync.Mutex
	started := map[uint64]audit.Record{} // calls recorded as started, awaiting their result
	outcome := func(result any, warning string, err error) (any, []*os.File, error) {
		o, e := msvc.OutcomeOf(result, warning, err)
		return o, nil, e
	}
	none := func(raw json.RawMessage) error {
		if len(raw) != 0 && string(raw) != "null" {
			return errors.New("this operation takes no arguments")
		}
		return nil
	}
	h := map[string]control.Handler{
		msvc.OpConfig: func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
			// A new process: the calls its predecessor started and never
			// ended get their result now, so that every started record
			// has one and none is held for a process that is gone.
			mu.Lock()
			for seq, rec := range started {
				b.audit.Finish(rec, "abandoned: the management API's process ended before the call did")
				delete(started, seq)
			}
			mu.Unlock()
			return msvc.Config{Port: port, CAPEM: []byte(t.CA), CertPEM: []byte(t.Certificate), KeyPEM: []byte(t.Key), Revoked: t.RevokedSerials}, nil, nil
		},
		msvc.OpStatus: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			if err := none(raw); err != nil {
				return nil, nil, err
			}
			return outcome(b.Status(), "", nil)
		},
		msvc.OpAllowlist: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			if err := none(raw); err != nil {
				return nil, nil, err
			}
			return outcome(b.Allowlist(), "", nil)
		},
		// The entries come in a memfd: a 10,000-entry list is larger
		// than one control message. The firewall validates every entry.
		msvc.OpSetAllowlist: func(_ context.Context, raw json.RawMessage, fds []*os.File) (any, []*os.File, error) {
			if err := none(raw); err != nil {
				return nil, nil, err
			}
			if len(fds) != 1 {
				return nil, nil, errors.New("the entries come as one descriptor")
			}
			body, err := io.ReadAll(io.LimitReader(io.NewSectionReader(fds[0], 0, maxAllowlistJSON+1), maxAllowlistJSON+1))
			if err != nil || len(body) > maxAllowlistJSON {
				return nil, nil, fmt.Errorf("reading the entries: %d bytes, %v", len(body), err)
			}
			var entries []string
			if err := control.Decode(body, &entries); err != nil {
				return nil, nil, err
			}
			if entries == nil {
				return nil, nil, errors.New("no entry list")
			}
			w, err := b.SetAllowlist(entries)
			return outcome(nil, w, err)
		},
		msvc.OpBackup: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			if err := none(raw); err != nil {
				return nil, nil, err
			}
			return outcome(nil, "", b.Backup())
		},
		msvc.OpRekey: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			if err := none(raw); err != nil {
				return nil, nil, err
			}
			return outcome(nil, "", b.Rekey())
		},
		msvc.OpAttest: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var nonce []byte
			if err := control.Decode(raw, &nonce); err != nil {
				return nil, nil, err
			}
			if len(nonce) < 16 || len(nonce) > 64 {
				return nil, nil, fmt.Errorf("nonce: %d bytes, want 16 to 64", len(nonce))
			}
			q, err := b.Attest(nonce)
			return outcome(q, "", err)
		},
		msvc.OpShutdown: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var reason string
			if err := control.Decode(raw, &reason); err != nil {
				return nil, nil, err
			}
			if len(reason) > maxReason {
				reason = reason[:maxReason]
			}
			b.Shutdown(reason)
			return outcome(nil, "", nil)
		},
		msvc.OpTestHook: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a msvc.TestHookArgs
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			th, ok := any(b).(interface {
				TestHook(service, hook string) (any, error)
			})
			if !ok {
				return nil, nil, errors.New("no test hooks in this image")
			}
			res, err := th.TestHook(a.Service, a.Hook)
			return outcome(res, "", err)
		},
		msvc.OpAuditAppend: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a msvc.AuditArgs
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			if a.Kind != audit.KindRequest {
				return nil, nil, fmt.Errorf("kind %q: the management API writes %q records only", a.Kind, audit.KindRequest)
			}
			for _, f := range []string{a.Who, a.Serial, a.What, a.Result} {
				if len(f) > maxAuditField {
					return nil, nil, fmt.Errorf("a field of %d bytes, at most %d", len(f), maxAuditField)
				}
			}
			if a.Result == audit.ResultStarted {
				mu.Lock()
				n := len(started)
				mu.Unlock()
				if n >= maxPendingCalls {
					return nil, nil, fmt.Errorf("%d calls already await their result", n)
				}
				rec, err := b.audit.Start(a.Kind, a.Who, a.Serial, a.What)
				if err == nil {
					mu.Lock()
					started[rec.Seq] = rec
					mu.Unlock()
				}
				return rec, nil, err
			}
			rec, err := b.audit.Append(a.Kind, a.Who, a.Serial, a.What, a.Result)
			return rec, nil, err
		},
		msvc.OpAuditFinish: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a msvc.FinishArgs
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			if len(a.Result) > maxAuditField {
				return nil, nil, fmt.Errorf("a result of %d bytes, at most %d", len(a.Result), maxAuditField)
			}
			mu.Lock()
			s, ok := started[a.Started.Seq]
			if ok && s.Hash == a.Started.Hash {
				delete(started, a.Started.Seq)
			}
			mu.Unlock()
			if !ok || s.Hash != a.Started.Hash {
				return nil, nil, fmt.Errorf("record %d is no call this process started", a.Started.Seq)
			}
			rec, err := b.audit.Finish(s, a.Result)
			return rec, nil, err
		},
		// The log reaches the process read-only: a new open of the
		// file (not a duplicate of PID1's read-write descriptor), or a
		// sealed memfd of the in-memory records.
		msvc.OpAuditView: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			if err := none(raw); err != nil {
				return nil, nil, err
			}
			v, err := b.audit.Snapshot()
			if err != nil {
				return nil, nil, err
			}
			defer v.Close()
			f, err := readOnlyCopy(v)
			if err != nil {
				return nil, nil, err
			}
			return msvc.ViewMeta{Start: v.Start, Head: v.Head, Seq: v.Seq, Size: v.Size}, []*os.File{f}, nil
		},
	}
	return h
}

// readOnlyCopy gives a descriptor that reads the view and cannot write.
func readOnlyCopy(v *audit.View) (*os.File, error) {
	if f := v.File(); f != nil {
		// /proc/self/fd/N opens the same inode anew, read-only, without
		// resolving the file's path (which lies in a volume the
		// workload owns).
		return os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	fd, err := unix.MemfdCreate("audit-view", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("audit view: %w", err)
	}
	m := os.NewFile(uintptr(fd), "audit-view")
	if _, err := io.Copy(m, v); err != nil {
		m.Close()
		return nil, fmt.Errorf("audit view: %w", err)
	}
	if _, err := unix.FcntlInt(m.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		m.Close()
		return nil, fmt.Errorf("audit view: sealing: %w", err)
	}
	return m, nil
}
