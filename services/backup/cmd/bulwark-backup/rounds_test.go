package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/control"
	bsvc "github.com/bulwarkvm/bulwark/services/backup"
	"github.com/bulwarkvm/bulwark/services/service"
)

// TestRoundPanic: a panic in a backup round is a failed round, recorded
// in the round's result and audited through PID1, and the process goes
// on: the next round runs.
func TestRoundPanic(t *testing.T) {
	testHookRound = func() { panic("injected in a backup round") }
	defer func() { testHookRound = nil }()
	var mu sync.Mutex
	var records []bsvc.Audit
	mine, theirs, err := control.Pair()
	if err != nil {
		t.Fatal(err)
	}
	pid1, err := control.New(mine, control.Options{Name: "backup", Handlers: map[string]control.Handler{
		bsvc.OpAudit: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a bsvc.Audit
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			mu.Lock()
			records = append(records, a)
			mu.Unlock()
			return nil, nil, nil
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := control.New(theirs, control.Options{Name: "pid1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pid1.Serve(ctx)
	go svc.Serve(ctx)
	defer pid1.Close()
	defer svc.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := &rounds{proc: &service.Process{Log: log, Peer: svc}, log: log,
		cfg: bsvc.Config{Node: "db-1", Staging: t.TempDir(), Backup: config.Backup{Sources: []config.BackupSource{{Kind: "tree", Path: "/x"}}}}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	defer r.cancel()
	for i := 0; i < 2; i++ {
		if err := r.start("test"); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		r.wg.Wait()
	}
	if st := r.status(); !strings.Contains(st, "injected in a backup round") {
		t.Errorf("status after the rounds: %q; want the panic as the failure", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(records) != 2 || records[0].Result != "failed" || !strings.Contains(records[0].What, "injected") {
		t.Errorf("audit records: %+v; want two failed rounds naming the panic", records)
	}
}
