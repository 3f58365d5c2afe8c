package proc

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// zombies lists this process's children that are zombies.
func zombies(t *testing.T) []string {
	t.Helper()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	me := strconv.Itoa(os.Getpid())
	var z []string
	for _, s := range stats {
		b, err := os.ReadFile(s)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
		f := strings.Fields(rest)
		if len(f) > 1 && f[0] == "Z" && f[1] == me {
			z = append(z, s)
		}
	}
	return z
}

func TestReaperMode(t *testing.T) {
	reaper(t)
	ctx := context.Background()

	out, err := Run(ctx, "sh", "-c", "echo out; echo err >&2")
	if err != nil || string(out) != "out\nerr\n" {
		t.Fatalf("Run = %q, %v", out, err)
	}
	if _, err := Run(ctx, "sh", "-c", "echo broken >&2; exit 3"); err == nil || !strings.Contains(err.Error(), "exit status 3: broken") {
		t.Fatalf("failure not reported with its status and output: %v", err)
	}
	if _, err := Run(ctx, "/nonexistent/tool"); err == nil {
		t.Fatal("a missing program ran")
	}
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := Run(tctx, "sleep", "10"); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("cancellation: %v", err)
	}

	// Orphans: the shell exits at once, its background children are
	// reparented to us and must be reaped without anyone waiting for them.
	before := Orphans()
	if _, err := Run(ctx, "sh", "-c", "(sleep 0.1 >/dev/null 2>&1 &) ; (sleep 0.1 >/dev/null 2>&1 &)"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for Orphans() < before+2 || len(zombies(t)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("orphans reaped: %d (want %d), zombies left: %v", Orphans()-before, 2, zombies(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Many concurrent runs: every status reaches its own Run.
	errs := make(chan error, 20)
	for i := range 20 {
		go func() {
			_, err := Run(ctx, "sh", "-c", "exit "+strconv.Itoa(i%2))
			if (err == nil) != (i%2 == 0) {
				errs <- fmt.Errorf("run %d (exit %d): got error %v", i, i%2, err)
				return
			}
			errs <- nil
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
