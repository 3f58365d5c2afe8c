package bootlog

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// pipeWriter writes data into the write end of a pipe whose read end goes
// to CopyLines, the way a child's standard output does, and reports the
// write's error and whether it finished within the time it was given.
func pipeWriter(t *testing.T, data []byte, within time.Duration) (pr *os.File, result func() error) {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := pw.Write(data)
		pw.Close()
		done <- err
	}()
	return pr, func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(within):
			return fmt.Errorf("the writer was still blocked after %s", within)
		}
	}
}

// TestCopyLinesLongLine: a 1 MiB line followed by ordinary lines. The
// writer never sees an error (the old bufio.Scanner loop stopped at its
// 64 KiB limit, the pipe was closed, and the workload got EPIPE/SIGPIPE),
// the long line arrives whole in marked pieces, and every ordinary line
// after it arrives.
func TestCopyLinesLongLine(t *testing.T) {
	const max = 4096
	long := make([]byte, 1<<20)
	for i := range long {
		long[i] = 'a' + byte(i%26)
	}
	// A multi-byte rune across the cut points: pieces are cut on rune
	// boundaries, so none of them ends in half a rune.
	copy(long[max-1:], "é")
	var in bytes.Buffer
	in.Write(long)
	in.WriteString("\n")
	for i := range 100 {
		fmt.Fprintf(&in, "line %d\n", i)
	}
	in.WriteString("last, without a newline")

	pr, result := pipeWriter(t, in.Bytes(), 10*time.Second)
	var got []string
	// A queue that holds the whole input: this test is about cutting and
	// order, not about dropping when the console falls behind (with
	// CopyLines' 256 KiB queue a busy machine that leaves this
	// goroutine unscheduled for a moment drops part of the 1 MiB line,
	// as it should; seen in CI: "arrived as 753685 bytes in 185 marked
	// pieces"). TestCopyLinesSlowConsole covers the dropping.
	err := copyLines(pr, max, 2*in.Len()+pieceCost*(in.Len()/max+200), func(s string) { got = append(got, s) })
	pr.Close() // as the init does once CopyLines returns
	if werr := result(); werr != nil {
		t.Errorf("the writer got %v", werr)
	}
	if err != nil {
		t.Errorf("CopyLines: %v", err)
	}

	var whole strings.Builder
	i := 0
	for ; i < len(got) && strings.HasSuffix(got[i], Continued); i++ {
		p := strings.TrimSuffix(got[i], Continued)
		if len(p) > max {
			t.Fatalf("piece %d is %d bytes, over the %d-byte limit", i, len(p), max)
		}
		if !utf8Valid(p) {
			t.Fatalf("piece %d ends in half a rune: %q", i, p[len(p)-4:])
		}
		whole.WriteString(p)
	}
	if i == len(got) {
		t.Fatalf("%d lines arrived, none of them the end of the long line", len(got))
	}
	whole.WriteString(got[i])
	if whole.String() != string(long) {
		t.Fatalf("the long line arrived as %d bytes in %d marked pieces; want %d bytes", whole.Len(), i+1, len(long))
	}
	rest := got[i+1:]
	if len(rest) != 101 {
		t.Fatalf("%d ordinary lines arrived after the long one, want 101", len(rest))
	}
	for j := range 100 {
		if rest[j] != "line "+strconv.Itoa(j) {
			t.Fatalf("ordinary line %d is %q", j, rest[j])
		}
	}
	if rest[100] != "last, without a newline" {
		t.Fatalf("the unterminated last line is %q", rest[100])
	}
}

// TestCopyLinesSlowConsole: while the console (emit) is stuck, the writer
// still writes everything and ends; what did not fit in the buffer is
// dropped and counted, and the count arrives once the console moves again.
func TestCopyLinesSlowConsole(t *testing.T) {
	var in bytes.Buffer
	n := 0
	for in.Len() < 4<<20 { // well over the pipe's and the buffer's capacity
		fmt.Fprintf(&in, "line %07d\n", n)
		n++
	}
	total := in.Len()
	pr, result := pipeWriter(t, in.Bytes(), 10*time.Second)

	stuck := make(chan struct{})
	var mu sync.Mutex
	var got []string
	done := make(chan error, 1)
	go func() {
		done <- CopyLines(pr, 4096, func(s string) {
			<-stuck
			mu.Lock()
			got = append(got, s)
			mu.Unlock()
		})
	}()
	werr := result() // the console is stuck all this time
	close(stuck)
	if werr != nil {
		t.Fatalf("with the console stuck, the writer: %v", werr)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CopyLines did not return after the writer closed the pipe")
	}
	pr.Close()

	mu.Lock()
	defer mu.Unlock()
	delivered, dropped, markers, next := 0, 0, 0, 0
	for _, s := range got {
		var d int
		if _, err := fmt.Sscanf(s, "[%d bytes dropped]", &d); err == nil {
			dropped += d
			markers++
			continue
		}
		var k int
		if _, err := fmt.Sscanf(s, "line %d", &k); err != nil || k < next {
			t.Fatalf("line %q out of order or mangled (next expected at least %d)", s, next)
		}
		next = k + 1
		delivered += len(s) + 1
	}
	if markers == 0 {
		t.Fatalf("no drop marker among %d lines, though the console was stuck while %d bytes were written", len(got), total)
	}
	if delivered+dropped != total {
		t.Fatalf("%d bytes delivered + %d counted as dropped = %d, want the %d written", delivered, dropped, delivered+dropped, total)
	}
	t.Logf("%d lines, %d bytes delivered, %d dropped in %d gaps", len(got), delivered, dropped, markers)
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// TestCopyLinesEmitPanics: a panic in emit reaches CopyLines' caller, and
// the pipe is still drained, so the writer is not blocked by it either.
func TestCopyLinesEmitPanics(t *testing.T) {
	data := bytes.Repeat([]byte("a line of output\n"), 1<<18) // 4.25 MiB
	pr, result := pipeWriter(t, data, 10*time.Second)
	defer pr.Close()
	func() {
		defer func() {
			if p := recover(); p != "emit failed" {
				t.Fatalf("recovered %v, want the panic of emit", p)
			}
		}()
		CopyLines(pr, 4096, func(string) { panic("emit failed") })
		t.Fatal("CopyLines returned although emit panicked")
	}()
	if err := result(); err != nil {
		t.Fatalf("after emit panicked, the writer: %v", err)
	}
}

// TestCopyLinesLimit: a limit too small for a whole rune is refused.
func TestCopyLinesLimit(t *testing.T) {
	err := CopyLines(strings.NewReader("x\n"), 4, func(string) {})
	if err == nil || !strings.Contains(err.Error(), "line limit 4") {
		t.Fatalf("CopyLines with a 4-byte limit: %v", err)
	}
}

// TestCopyLinesEndings: "\r\n" ends a line like "\n"; empty lines are
// kept; a line of exactly the limit is not cut.
func TestCopyLinesEndings(t *testing.T) {
	var got []string
	in := "a\r\n\nb\r" + "\n" + strings.Repeat("x", 16) + "\n" + strings.Repeat("y", 17)
	if err := CopyLines(strings.NewReader(in), 16, func(s string) { got = append(got, s) }); err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "", "b", strings.Repeat("x", 16), strings.Repeat("y", 16) + Continued, "y"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, want %q", got, want)
	}
}
