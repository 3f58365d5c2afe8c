package powerbutton

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// TestPanicInReader: the loop that reads the button's events runs again
// after a panic (after 1 s), and a press is still seen.
func TestPanicInReader(t *testing.T) {
	reports := make(chan safego.Report, 4)
	prev := safego.SetReporter(func(r safego.Report) { reports <- r })
	t.Cleanup(func() { safego.SetReporter(prev) })
	var n atomic.Int32
	testHookRead = func() {
		if n.Add(1) == 1 {
			panic("injected")
		}
	}
	t.Cleanup(func() { testHookRead = nil })

	// A sysfs with one "Power Button" whose event device is a FIFO the
	// test writes events into.
	sys, dev := t.TempDir(), t.TempDir()
	name := filepath.Join(sys, "class/input/event3/device/name")
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte("Power Button\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dev, "input", "event3")
	os.MkdirAll(filepath.Dir(fifo), 0o755)
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Read-write, so that neither this open nor Watch's waits for the
	// other end.
	w, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	pressed := make(chan struct{}, 1)
	if _, err := Watch(sys, dev, pressed); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-reports:
		if !strings.Contains(r.Name, "power button") || r.Value != "injected" || r.Restart != time.Second ||
			!strings.Contains(r.Stack, "TestPanicInReader") {
			t.Fatalf("report %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no report of the reader's panic")
	}
	if _, err := w.Write(event(evKey, keyPower, 1)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pressed:
	case <-time.After(5 * time.Second):
		t.Fatal("a press after the reader's panic was not seen")
	}
}
