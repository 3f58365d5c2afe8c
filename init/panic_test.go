package main

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/bootlog"
	"github.com/bulwarkvm/bulwark/internal/safego"
)

// panicBoot is a boot with a console and an audit log, and newBoot's
// panic reporter installed.
func panicBoot(t *testing.T) (*boot, *syncBuffer) {
	var con syncBuffer
	log := slog.New(bootlog.New(&con, slog.LevelInfo))
	b := &boot{log: log, shutdown: make(chan string, 1), audit: audit.New(nil)}
	prev := safego.SetReporter(safego.Limited(b.reportPanic))
	t.Cleanup(func() { safego.SetReporter(prev) })
	return b, &con
}

// panicRecords are the audit log's records of recovered panics.
func panicRecords(t *testing.T, l *audit.Log) []audit.Record {
	t.Helper()
	v, err := l.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var out []audit.Record
	dec := json.NewDecoder(v)
	for dec.More() {
		var r audit.Record
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		if r.Kind == auditKindPanic {
			out = append(out, r)
		}
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

// TestPanicReportedAndAudited: a panic in a goroutine of a package (here
// one started with safego.Go, as the front door's are) is logged at ERROR
// with its stack and audited, and the node carries on: no shutdown.
func TestPanicReportedAndAudited(t *testing.T) {
	b, con := panicBoot(t)
	safego.Go("test service connection", func() { panic("injected") })
	waitFor(t, "the panic is audited", func() bool { return len(panicRecords(t, b.audit)) == 1 })
	r := panicRecords(t, b.audit)[0]
	if r.What != "panic in test service connection: injected" || r.Result != "recovered" {
		t.Fatalf("audit record %+v", r)
	}
	out := con.String()
	if !strings.Contains(out, "bulwark: ERROR: panic in test service connection: injected stack=") {
		t.Fatalf("console:\n%s", out)
	}
	select {
	case reason := <-b.shutdown:
		t.Fatalf("a recovered panic in a service's goroutine shut the node down (%s)", reason)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestPanicInInitGoroutine: a panic in one of the init's own goroutines
// (goSafe) is reported and audited the same way, and then shuts the node
// down in order, as before.
func TestPanicInInitGoroutine(t *testing.T) {
	b, con := panicBoot(t)
	b.goSafe("test init goroutine", func() { panic("injected") })
	select {
	case reason := <-b.shutdown:
		if reason != "panic in test init goroutine" {
			t.Fatalf("shutdown reason %q", reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no shutdown after a panic in an init goroutine")
	}
	waitFor(t, "the panic is audited", func() bool { return len(panicRecords(t, b.audit)) == 1 })
	out := con.String()
	for _, want := range []string{
		"bulwark: ERROR: panic in test init goroutine: injected stack=",
		"bulwark: FATAL: panic in test init goroutine: injected; shutting down",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
}

// TestPanicFloodBounded: a panic that recurs on every connection makes a
// bounded number of records; the next one after a pause says how many
// were left out.
func TestPanicFloodBounded(t *testing.T) {
	b, _ := panicBoot(t)
	for range 50 {
		safego.Call("test flood", func() error { panic("injected") })
	}
	if n := len(panicRecords(t, b.audit)); n > 10 {
		t.Fatalf("50 panics made %d audit records, want a bounded number", n)
	}
}
