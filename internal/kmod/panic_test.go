package kmod

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/safego"
	"github.com/bulwarkvm/bulwark/internal/safego/safegotest"
)

// within runs fn and fails the test if it does not return in time: a
// loader that loses a panic leaves its waiters waiting.
func within(t *testing.T, fn func() map[string]error) map[string]error {
	t.Helper()
	ch := make(chan map[string]error, 1)
	go func() { ch <- fn() }()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("the load did not return after a panic")
		return nil
	}
}

// TestPanicInWorker: a panic in the work for a module is recovered and
// reported, and that module fails with an error that says so, in a
// parallel pass (in the worker goroutines) and a sequential one.
func TestPanicInWorker(t *testing.T) {
	for _, parallel := range []bool{true, false} {
		ch := safegotest.Reports(t, 64)
		testHookWorker = func() { panic("injected") }
		t.Cleanup(func() { testHookWorker = nil })
		l, _ := fakeLoader(t, testDep, "", nil)
		failed := within(t, func() map[string]error {
			return l.loadList([]Module{{Name: "nft_ct"}, {Name: "dm-crypt"}}, parallel)
		})
		var pe *safego.PanicError
		for _, name := range []string{"nft_ct", "dm-crypt"} {
			if err := failed[name]; !errors.As(err, &pe) || !strings.Contains(err.Error(), "injected") {
				t.Errorf("parallel=%v: %s: %v, want the panic as its error", parallel, name, err)
			}
		}
		if len(ch) == 0 {
			t.Errorf("parallel=%v: no panic reported", parallel)
		}
		testHookWorker = nil
	}
}

// TestPanicInLoadReleasesWaiters: a panic while a module shared by two
// others is loaded fails both of them, and the one that waited for the
// other's load of it does not wait forever; a later load tries again.
func TestPanicInLoadReleasesWaiters(t *testing.T) {
	ch := safegotest.Reports(t, 64)
	l, loaded := fakeLoader(t, testDep, "", nil)
	record := l.insert
	l.insert = func(file string) error {
		if file == "kernel/lib/libcrc32c.ko" {
			time.Sleep(50 * time.Millisecond) // let the other module wait for this load
			panic("injected")
		}
		return record(file)
	}
	failed := within(t, func() map[string]error {
		return l.LoadList([]Module{{Name: "nf_conntrack"}, {Name: "nf_tables"}, {Name: "dm-crypt"}})
	})
	for _, name := range []string{"nf_conntrack", "nf_tables"} {
		if err := failed[name]; err == nil || !strings.Contains(err.Error(), "panic in loading module libcrc32c: injected") {
			t.Errorf("%s: %v, want the panic while loading libcrc32c", name, err)
		}
	}
	if failed["dm_crypt"] != nil || failed["dm-crypt"] != nil {
		t.Errorf("dm-crypt, which needs nothing that panicked: %v", failed)
	}
	select {
	case r := <-ch:
		if !strings.Contains(r.Stack, "TestPanicInLoadReleasesWaiters") {
			t.Errorf("the report's stack does not show the panic:\n%s", r.Stack)
		}
	default:
		t.Error("no panic reported")
	}
	l.insert = record
	if failed := l.LoadList([]Module{{Name: "nf_tables"}}); len(failed) != 0 {
		t.Fatalf("a later load: %v", failed)
	}
	_ = loaded
}
