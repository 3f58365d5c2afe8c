package bootlog

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// TestPanicInLineReader: a panic in the goroutine that reads and splits
// the lines is reported; the rest of the input is still read (dropped and
// counted), so the writer is neither blocked nor cut off, and CopyLines
// returns an error that names the panic.
func TestPanicInLineReader(t *testing.T) {
	reports := make(chan safego.Report, 4)
	prev := safego.SetReporter(func(r safego.Report) { reports <- r })
	t.Cleanup(func() { safego.SetReporter(prev) })
	testHookFill = func() { panic("injected") }
	t.Cleanup(func() { testHookFill = nil })

	data := bytes.Repeat([]byte("a line of output\n"), 1<<16) // 1.06 MiB, far over a pipe's buffer
	pr, result := pipeWriter(t, data, 10*time.Second)
	defer pr.Close()
	var mu sync.Mutex
	var got []string
	done := make(chan error, 1)
	go func() {
		done <- CopyLines(pr, 4096, func(s string) {
			mu.Lock()
			got = append(got, s)
			mu.Unlock()
		})
	}()
	if err := result(); err != nil {
		t.Fatalf("after the reader panicked, the writer: %v", err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("CopyLines returned %v, want an error naming the panic", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CopyLines did not return after the writer closed the pipe")
	}
	select {
	case r := <-reports:
		if r.Value != "injected" || !strings.Contains(r.Stack, "TestPanicInLineReader") {
			t.Fatalf("report %+v", r)
		}
	default:
		t.Fatal("the reader's panic was not reported")
	}
	mu.Lock()
	defer mu.Unlock()
	dropped := 0
	for _, s := range got {
		var d int
		if _, err := fmt.Sscanf(s, "[%d bytes dropped]", &d); err == nil {
			dropped += d
		}
	}
	if dropped != len(data) {
		t.Errorf("%d bytes counted as dropped, want all %d written (lines %q)", dropped, len(data), got)
	}
}
