package main

import (
	"context"
	"slices"
	"testing"
)

// TestOnShutdownBefore: a step inserted before an earlier stage's step runs
// after every step registered since, and just before that one.
func TestOnShutdownBefore(t *testing.T) {
	var b boot
	noop := func(context.Context) error { return nil }
	for _, name := range []string{"erase", "close audit log", "stop workload", "stop backups"} {
		b.onShutdown(name, noop)
	}
	if err := b.onShutdownBefore("close audit log", "final backup", 0, noop); err != nil {
		t.Fatal(err)
	}
	var ran []string
	for i := len(b.teardown) - 1; i >= 0; i-- { // powerOff's order
		ran = append(ran, b.teardown[i].name)
	}
	want := []string{"stop backups", "stop workload", "final backup", "close audit log", "erase"}
	if !slices.Equal(ran, want) {
		t.Fatalf("teardown order %q, want %q", ran, want)
	}
	if err := b.onShutdownBefore("no such step", "x", 0, noop); err == nil {
		t.Fatal("a step before a step that does not exist was accepted")
	}
	if len(b.teardown) != len(want) {
		t.Fatalf("a refused step was registered: %d steps", len(b.teardown))
	}
}
