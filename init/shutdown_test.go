package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/config"
)

// TestRunTeardownBound: a step that ignores its context is left behind
// once its share and the grace are spent, a step that gives up reports
// that it was cut short, and the key-removing step after them still runs,
// with its reserved time, before the bound is over.
func TestRunTeardownBound(t *testing.T) {
	b := &boot{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var mu sync.Mutex
	var ran []string
	mark := func(name string) {
		mu.Lock()
		defer mu.Unlock()
		ran = append(ran, name)
	}
	release := make(chan struct{})
	defer close(release)
	var eraseBudget time.Duration
	// Registered in boot order; they run in reverse.
	b.onShutdownWithin("erase volume", 3*time.Second, true, func(ctx context.Context) error {
		d, _ := ctx.Deadline()
		eraseBudget = time.Until(d)
		mark("erase volume")
		return nil
	})
	b.onShutdownWithin("stop backups", 300*time.Millisecond, false, func(ctx context.Context) error {
		<-ctx.Done()
		mark("stop backups")
		return fmt.Errorf("the round's command was killed: %w", errCutShort)
	})
	b.onShutdownWithin("close front door", 300*time.Millisecond, false, func(ctx context.Context) error {
		<-release // ignores its context
		return nil
	})
	b.onShutdown("close management API", func(context.Context) error { mark("close management API"); return nil })

	bound := 5 * time.Second
	start := time.Now()
	failed, cut := b.runTeardown(start.Add(bound))
	took := time.Since(start)
	if want := []string{"close management API", "stop backups", "erase volume"}; !slices.Equal(ran, want) {
		t.Errorf("steps that ran to the end: %q, want %q", ran, want)
	}
	if want := []string{"close front door", "stop backups"}; !slices.Equal(cut, want) {
		t.Errorf("cut short: %q, want %q", cut, want)
	}
	if failed != 2 {
		t.Errorf("%d failed steps, want 2", failed)
	}
	// The hanging step: its share plus the grace; then the rest, well
	// within the bound.
	if took > bound {
		t.Errorf("the teardown took %s, over its bound of %s", took, bound)
	}
	if eraseBudget < 2*time.Second {
		t.Errorf("the erase step had %s, less than its reserved share", eraseBudget)
	}
}

// TestRunTeardownSpentBound: when the bound is already spent, ordinary
// steps get no time but the key-removing step still runs.
func TestRunTeardownSpentBound(t *testing.T) {
	b := &boot{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	erased := false
	b.onShutdownWithin("erase volume", time.Second, true, func(ctx context.Context) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		erased = true
		return nil
	})
	b.onShutdown("final backup", func(ctx context.Context) error {
		<-ctx.Done()
		return fmt.Errorf("final backup: %w", errCutShort)
	})
	failed, cut := b.runTeardown(time.Now())
	if !erased {
		t.Error("the erase step did not run when the bound was spent")
	}
	if failed != 1 || !slices.Equal(cut, []string{"final backup"}) {
		t.Errorf("failed %d, cut %q; want 1 and the final backup", failed, cut)
	}
}

// TestBackupCommandStopsWithRound: a backup command that ignores SIGTERM
// and SIGPIPE and never writes cannot keep its round (and so the "stop
// backups" step) waiting: the round's end kills it after the grace, and
// closing its stream early does too.
func TestBackupCommandStopsWithRound(t *testing.T) {
	b := &boot{log: slog.New(slog.NewTextHandler(io.Discard, nil)), cfg: &config.Config{Workload: &config.Workload{UID: 65534, GID: 65534}}}
	r := &backups{b: b}
	stubborn := []string{"/bin/sh", "-c", `trap "" TERM PIPE; while :; do sleep 1; done`}

	ctx, cancel := context.WithCancel(context.Background())
	in, err := r.command(ctx, stubborn)
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() { _, err := io.ReadAll(in); read <- err }()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-read:
		if err == nil {
			t.Error("the killed command's stream ended without an error: it would make a complete backup")
		}
	case <-time.After(commandStopGrace + 3*time.Second):
		t.Fatal("the round's end did not stop a command that ignores SIGTERM")
	}
	in.Close()
	if !r.killed.Load() {
		t.Error("the kill is not recorded for the teardown's report")
	}

	in, err = r.command(context.Background(), stubborn)
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() { in.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(commandStopGrace + 3*time.Second):
		t.Fatal("closing the stream early waits on a command that neither writes nor exits")
	}
	p := in.(*commandStream).p
	select {
	case <-p.Done():
	case <-time.After(commandStopGrace + 3*time.Second):
		t.Fatal("the command outlived its closed stream")
	}
}

// TestBackupRoundPanic: a panic in a backup round (whose code reads what
// the bucket sends) is a failed round, audited, and never a shutdown of
// the node, which would crypto-erase its volumes.
func TestBackupRoundPanic(t *testing.T) {
	testHookRound = func() { panic("injected in a backup round") }
	defer func() { testHookRound = nil }()
	b := &boot{log: slog.New(slog.NewTextHandler(io.Discard, nil)), shutdown: make(chan string, 1), audit: audit.New(nil),
		cfg: &config.Config{Hostname: "db-1"}}
	r := &backups{b: b, cfg: &config.Backup{Sources: []config.BackupSource{{Kind: "tree", Path: "/x"}}}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	defer r.cancel()
	if err := r.start("test"); err != nil {
		t.Fatal(err)
	}
	r.wg.Wait()
	r.mu.Lock()
	last := strings.Join(r.last, "; ")
	r.mu.Unlock()
	if !strings.Contains(last, "injected in a backup round") {
		t.Errorf("the round's result: %q; want the panic as its failure", last)
	}
	select {
	case why := <-b.shutdown:
		t.Fatalf("a panic in a backup round shut the node down (%s)", why)
	default:
	}
	if !strings.Contains(string(b.audit.Bytes()), "injected in a backup round") {
		t.Error("the failed round is not in the audit log")
	}
}
