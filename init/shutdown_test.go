package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
// backups" step) waiting: the round's end kills it after the grace, its
// exit is reported as a failure (so the backup process does not record a
// complete backup), and the kill is recorded for the teardown's report.
func TestBackupCommandStopsWithRound(t *testing.T) {
	b := &boot{log: slog.New(slog.NewTextHandler(io.Discard, nil)), cfg: &config.Config{Workload: &config.Workload{UID: 65534, GID: 65534}}}
	r := &backups{b: b}
	stubborn := []string{"/bin/sh", "-c", `trap "" TERM PIPE; while :; do sleep 1; done`}

	ctx, cancel := context.WithCancel(context.Background())
	in, cs, err := r.command(ctx, stubborn)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	read := make(chan error, 1)
	go func() { io.ReadAll(in); read <- cs.exitErr() }()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-read:
		if err == nil {
			t.Error("the killed command's exit is not a failure: it would make a complete backup")
		}
	case <-time.After(commandStopGrace + 3*time.Second):
		t.Fatal("the round's end did not stop a command that ignores SIGTERM")
	}
	if !r.killed.Load() {
		t.Error("the kill is not recorded for the teardown's report")
	}
	idle := make(chan struct{})
	go func() { r.wg.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-time.After(3 * time.Second):
		t.Fatal("the stop step would still wait for the killed command")
	}
}

// TestBackupCommandSlots: the backup process can have at most
// maxBackupCommands commands running at once; when it exits, PID1 ends
// the commands it started for it, and their slots come free.
func TestBackupCommandSlots(t *testing.T) {
	b := &boot{log: slog.New(slog.NewTextHandler(io.Discard, nil)), cfg: &config.Config{Workload: &config.Workload{UID: 65534, GID: 65534}}}
	r := &backups{b: b, cmds: map[uint64]*commandStream{}}
	quiet := []string{"/bin/sh", "-c", "sleep 60"}
	var outs []*os.File
	defer func() {
		for _, f := range outs {
			f.Close()
		}
	}()
	for i := 0; i < maxBackupCommands; i++ {
		out, cs, err := r.command(context.Background(), quiet)
		if err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
		outs = append(outs, out)
		r.cmds[uint64(i+1)] = cs
	}
	if _, _, err := r.command(context.Background(), quiet); err == nil || !strings.Contains(err.Error(), "running already") {
		t.Fatalf("a command past the limit: %v", err)
	}
	r.stopCommands() // the backup process exited
	deadline := time.Now().Add(commandStopGrace + 3*time.Second)
	for {
		r.mu.Lock()
		n := r.running
		r.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d commands still running after their process exited", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, _, err := r.command(context.Background(), []string{"/bin/true"})
	if err != nil {
		t.Fatalf("a command once the slots are free: %v", err)
	}
	out.Close()
}

// TestOwnedDirRefusesLinks: the backup's staging and store directories
// are made and handed to the backup process's uid without following a
// link the workload planted on its volume: the link's target keeps its
// owner.
func TestOwnedDirRefusesLinks(t *testing.T) {
	vol := t.TempDir()
	target := t.TempDir() // stands for /etc
	if err := os.Symlink(target, filepath.Join(vol, ".bulwark")); err != nil {
		t.Fatal(err)
	}
	if err := ownedDir(vol, ".bulwark/backup-staging", 61004); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("through a planted link: %v, want a refusal", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil || st.Uid != 0 {
		t.Errorf("the link's target: owner %d (%v), want 0", st.Uid, err)
	}
	if _, err := os.Stat(filepath.Join(target, "backup-staging")); !os.IsNotExist(err) {
		t.Errorf("a directory was made through the link: %v", err)
	}
	os.Remove(filepath.Join(vol, ".bulwark"))
	if err := ownedDir(vol, ".bulwark/backup-staging", 61004); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(filepath.Join(vol, ".bulwark", "backup-staging"), &st); err != nil || st.Uid != 61004 || st.Mode&0o777 != 0o700 {
		t.Errorf("staging: uid %d mode %o (%v), want 61004 and 0700", st.Uid, st.Mode&0o777, err)
	}
	if err := unix.Stat(filepath.Join(vol, ".bulwark"), &st); err != nil || st.Uid != 0 {
		t.Errorf(".bulwark: uid %d (%v), want root's", st.Uid, err)
	}
}
