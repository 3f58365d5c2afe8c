// Package safego starts goroutines that do not take the process down when
// they panic.
//
// Until the network-facing services leave PID1, they run in the init's
// process, and there an unrecovered panic in any goroutine ends PID1: the
// kernel panics, panic=-1 reboots the machine, and the next boot formats
// the data volumes with fresh keys. A bug that a client, a peer or a
// management caller can reach would then lose the database. So every
// goroutine of that process is started through Go or Loop, or its body is
// a Call or a Restart: a panic is recovered there, reported to the
// process-wide reporter (SetReporter), and the caller's choice of function
// says what follows:
//
//   - Go: the goroutine ends; its deferred calls have run (a connection's
//     goroutine closes its connection that way) and the others carry on.
//   - Call: the panic becomes an error (*PanicError) that the caller
//     hands to whoever waits for the result, so that nobody waits forever.
//   - Restart and Loop: a long-lived loop runs again after a pause, 1 s
//     after a first panic, doubling to 30 s while it keeps panicking.
//
// Every recovered panic is reported. Limited wraps a reporter with a rate
// limit per name (a burst of 5, then one per 10 s), so that a panic an
// attacker can trigger on every connection cannot flood the console and the
// audit log; a report then says how many of the same name were left out
// before it. Names should therefore be fixed strings per kind of goroutine
// ("front door [::]:5432 connection"), not one per connection.
package safego

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Report describes one recovered panic.
type Report struct {
	// Name is the goroutine's name, as its starter gave it.
	Name string
	// Value is the panic value, formatted with %v and cut at MaxValue
	// bytes.
	Value string
	// Stack is the panicking goroutine's stack, cut at MaxStack bytes.
	Stack string
	// Restart is how long a loop (Restart, Loop) waits before it runs
	// again; 0 when the goroutine ended or the panic became an error.
	Restart time.Duration
	// Suppressed counts the panics of this name that the rate limit
	// (Limited) left unreported since the last report of it.
	Suppressed int
}

// Limits of a report's text.
const (
	MaxValue = 1024
	MaxStack = 64 << 10
)

// Backoff of Restart and Loop. A run that lasted resetAfter before it
// panicked starts the backoff over: a loop that panics once a day waits
// 1 s each time, not 30 s.
var (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
	resetAfter = time.Minute
)

var reporter atomic.Pointer[func(Report)]

// SetReporter sets the function that receives every report, process-wide,
// and returns the one it replaces (nil for the default). nil restores the
// default, which writes the report to standard error. The reporter runs
// in the goroutine that panicked, before it ends, returns its error or
// restarts; a reporter that panics itself is recovered and the report
// goes to standard error instead.
func SetReporter(fn func(Report)) func(Report) {
	var old *func(Report)
	if fn == nil {
		old = reporter.Swap(nil)
	} else {
		old = reporter.Swap(&fn)
	}
	if old == nil {
		return nil
	}
	return *old
}

// PanicError is a recovered panic returned as an error (Call, Recovered).
type PanicError struct {
	Name  string
	Value string
	cause error
}

func (e *PanicError) Error() string { return "panic in " + e.Name + ": " + e.Value }

// Unwrap returns the panic value when it was an error.
func (e *PanicError) Unwrap() error { return e.cause }

// Go runs fn in a new goroutine. A panic in fn is recovered and reported,
// and the goroutine ends (fn's deferred calls have run by then).
func Go(name string, fn func()) {
	go func() {
		defer func() {
			if v := recover(); v != nil {
				recovered(name, v, stack(), 0)
			}
		}()
		fn()
	}()
}

// Call runs fn in the calling goroutine and returns its error; a panic in
// fn is recovered, reported and returned as a *PanicError.
func Call(name string, fn func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = recovered(name, v, stack(), 0)
		}
	}()
	return fn()
}

// Recovered reports a panic value that the caller recovered itself (code
// that must re-panic afterwards, such as an HTTP handler ending its
// connection with http.ErrAbortHandler) and returns it as a *PanicError.
// Call it from the deferred function, so that the stack is the panic's.
func Recovered(name string, value any) error {
	return recovered(name, value, stack(), 0)
}

// Restart runs fn in the calling goroutine until it returns, and returns
// what it returns. After a panic in fn it reports it, waits (1 s, then
// twice as long after each further panic in a row, at most 30 s), and runs
// fn again from its start. When stop is closed during a wait, Restart
// returns nil without running fn again; a nil stop is never closed.
func Restart(name string, stop <-chan struct{}, fn func() error) error {
	wait := minBackoff
	for {
		began := time.Now()
		err, v, st, panicked := run(fn)
		if !panicked {
			return err
		}
		if time.Since(began) >= resetAfter {
			wait = minBackoff
		}
		recovered(name, v, st, wait)
		t := time.NewTimer(wait)
		select {
		case <-stop:
			t.Stop()
			return nil
		case <-t.C:
		}
		wait = min(2*wait, maxBackoff)
	}
}

// Loop runs fn in a new goroutine under Restart: after a panic fn runs
// again (with the backoff), until it returns or stop is closed.
func Loop(name string, stop <-chan struct{}, fn func()) {
	go Restart(name, stop, func() error { fn(); return nil })
}

// run calls fn and recovers a panic in it, with the stack where it
// happened. A panic with a nil value is a *runtime.PanicNilError since Go
// 1.21, so v is never nil for a panic.
func run(fn func() error) (err error, v any, st string, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			v, st, panicked = r, stack(), true
		}
	}()
	return fn(), nil, "", false
}

// stack is the calling goroutine's stack. Taken in a deferred function
// while the goroutine panics, it still shows where the panic happened
// (the panicking frames are unwound only once that function returns).
func stack() string { return cut(string(debug.Stack()), MaxStack) }

// recovered reports the panic v of the goroutine name, which happened
// where st shows, and returns it as an error.
func recovered(name string, v any, st string, restart time.Duration) *PanicError {
	e := &PanicError{Name: name, Value: cut(fmt.Sprint(v), MaxValue)}
	if err, ok := v.(error); ok {
		e.cause = err
	}
	deliver(Report{Name: name, Value: e.Value, Stack: st, Restart: restart})
	return e
}

// deliver hands r to the reporter; a reporter that panics is recovered
// and r goes to standard error.
func deliver(r Report) {
	fn := reporter.Load()
	if fn == nil {
		toStderr(r)
		return
	}
	defer func() {
		if v := recover(); v != nil {
			toStderr(r)
			fmt.Fprintf(os.Stderr, "safego: the reporter panicked too: %s\n", cut(fmt.Sprint(v), MaxValue))
		}
	}()
	(*fn)(r)
}

func toStderr(r Report) {
	var b strings.Builder
	fmt.Fprintf(&b, "panic in %s: %s", r.Name, r.Value)
	if r.Restart > 0 {
		fmt.Fprintf(&b, " (running it again in %s)", r.Restart)
	}
	if r.Suppressed > 0 {
		fmt.Fprintf(&b, " (%d more not reported before this one)", r.Suppressed)
	}
	b.WriteString("\n")
	b.WriteString(r.Stack)
	os.Stderr.WriteString(b.String())
}

// cut shortens s to at most n bytes, on a rune boundary, marking the cut.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = " [cut]"
	i := n - len(mark)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + mark
}

// Rate limit of Limited, per name.
const (
	burst       = 5
	refillEvery = 10 * time.Second
	// maxNames bounds the limiter's table; names beyond it share one
	// bucket (a caller that names goroutines per connection would
	// otherwise grow it without end).
	maxNames = 256
)

// Limited returns a reporter that passes reports on to fn at a bounded
// rate per name: a burst of 5, then one per 10 s. A report it passes on
// carries, in Suppressed, how many of the same name it held back since
// the last one it passed on.
func Limited(fn func(Report)) func(Report) {
	return (&limiter{buckets: map[string]*bucket{}, now: time.Now}).reporter(fn)
}

func (l *limiter) reporter(fn func(Report)) func(Report) {
	return func(r Report) {
		ok, n := l.allow(r.Name)
		if !ok {
			return
		}
		r.Suppressed += n
		fn(r)
	}
}

// limiter is a token bucket per name.
type limiter struct {
	mu      sync.Mutex
	buckets map[string]*bucket
	now     func() time.Time
}

type bucket struct {
	tokens     float64
	last       time.Time
	suppressed int
}

// overflowName is the shared bucket of names past maxNames.
const overflowName = "\x00other"

// allow takes a token of name's bucket. It reports whether to pass this
// report on and, if so, how many were held back since the last one.
func (l *limiter) allow(name string) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b, ok := l.buckets[name]
	if !ok {
		if len(l.buckets) >= maxNames {
			name = overflowName
			b = l.buckets[name]
		}
		if b == nil {
			b = &bucket{tokens: burst, last: now}
			l.buckets[name] = b
		}
	}
	b.tokens = min(burst, b.tokens+float64(now.Sub(b.last))/float64(refillEvery))
	b.last = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0
	}
	b.tokens--
	n := b.suppressed
	b.suppressed = 0
	return true, n
}
