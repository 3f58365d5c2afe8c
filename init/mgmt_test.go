package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/config"
	msvc "github.com/bulwarkvm/bulwark/services/mgmt"
)

// TestMgmtHandlersUntrusted: what the management API's process asks PID1
// for is checked as untrusted input: it writes management-call records
// only, ends only calls PID1 recorded as started, and gets the audit log
// read-only.
func TestMgmtHandlersUntrusted(t *testing.T) {
	b := &boot{log: slog.New(slog.NewTextHandler(io.Discard, nil)), audit: audit.New(nil),
		cfg: &config.Config{TLS: &config.TLS{CA: "ca", Certificate: "cert", Key: "key"}}}
	logFile := filepath.Join(t.TempDir(), "audit.log")
	if err := b.audit.Attach(logFile); err != nil {
		t.Fatal(err)
	}
	h := b.mgmtHandlers(9443)
	call := func(op string, args any, fds ...*os.File) (any, []*os.File, error) {
		raw, _ := json.Marshal(args)
		if args == nil {
			raw = nil
		}
		return h[op](context.Background(), raw, fds)
	}
	if _, _, err := call(msvc.OpAuditAppend, msvc.AuditArgs{Kind: audit.KindBoot, What: "ready", Result: "ok"}); err == nil {
		t.Error("the management API wrote a boot record")
	}
	res, _, err := call(msvc.OpAuditAppend, msvc.AuditArgs{Kind: audit.KindRequest, Who: "CN=robot", What: "POST /v1/backup", Result: audit.ResultStarted})
	if err != nil {
		t.Fatal(err)
	}
	started := res.(audit.Record)
	forged := started
	forged.Hash = strings.Repeat("0", 64)
	if _, _, err := call(msvc.OpAuditFinish, msvc.FinishArgs{Started: forged, Result: "202 ok"}); err == nil {
		t.Error("a call's end accepted for a started record PID1 did not write")
	}
	if _, _, err := call(msvc.OpAuditFinish, msvc.FinishArgs{Started: started, Result: "202 ok"}); err != nil {
		t.Errorf("ending the started call: %v", err)
	}
	if _, _, err := call(msvc.OpAuditFinish, msvc.FinishArgs{Started: started, Result: "202 ok"}); err == nil {
		t.Error("the same call ended twice")
	}
	if _, _, err := call(msvc.OpAuditAppend, msvc.AuditArgs{Kind: audit.KindRequest, What: strings.Repeat("x", maxAuditField+1), Result: "ok"}); err == nil {
		t.Error("an oversized record accepted")
	}
	meta, fds, err := call(msvc.OpAuditView, nil)
	if err != nil || len(fds) != 1 {
		t.Fatalf("audit view: %v, %d descriptors", err, len(fds))
	}
	defer fds[0].Close()
	if _, err := fds[0].Write([]byte("forged\n")); err == nil {
		t.Error("the audit log's descriptor given to the management API is writable")
	}
	body, _ := io.ReadAll(io.NewSectionReader(fds[0], 0, meta.(msvc.ViewMeta).Size))
	if !strings.Contains(string(body), "POST /v1/backup") {
		t.Errorf("the view lacks the call: %q", body)
	}
	if _, _, err := call(msvc.OpAttest, []byte("short")); err == nil {
		t.Error("a 5-byte nonce passed on to the TPM")
	}
	if _, _, err := call(msvc.OpStatus, map[string]int{"x": 1}); err == nil {
		t.Error("arguments to an operation that takes none accepted")
	}
	// A call started by a process that then died is ended, abandoned,
	// when the next process starts (its first request is its config).
	res, _, err = call(msvc.OpAuditAppend, msvc.AuditArgs{Kind: audit.KindRequest, Who: "CN=robot", What: "PUT /v1/allowlist", Result: audit.ResultStarted})
	if err != nil {
		t.Fatal(err)
	}
	orphan := res.(audit.Record)
	if _, _, err := call(msvc.OpConfig, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b.audit.Bytes()), fmt.Sprintf(`"ref":%d`, orphan.Seq)) {
		t.Error("the dead process's started call has no result record")
	}
	if _, _, err := call(msvc.OpAuditFinish, msvc.FinishArgs{Started: orphan, Result: "200 ok"}); err == nil {
		t.Error("a call abandoned with its process was ended again")
	}
}
