package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// plainInterval is how often progress is written as a plain line when
// standard error is not a terminal (a log file, a CI job).
var plainInterval = 2 * time.Second

// progress reports a long operation on standard error: a bar with bytes,
// rate and time left on a terminal (schollz/progressbar), a plain line
// every plainInterval otherwise, nothing when quiet. A total below zero
// means the size is not known (a listing, an image build): a spinner with
// the elapsed time then, and lines that say what is being done.
type progress struct {
	what  string
	total int64
	bar   *progressbar.ProgressBar
	plain io.Writer

	mu      sync.Mutex
	done    int64
	detail  string
	start   time.Time
	printed bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newProgress(w io.Writer, quiet bool, what string, total int64) *progress {
	p := &progress{what: what, total: total, start: time.Now()}
	switch {
	case quiet:
	case isTerminal(w):
		opts := []progressbar.Option{
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(what),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100 * time.Millisecond),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
		}
		if total >= 0 {
			opts = append(opts, progressbar.OptionShowBytes(true), progressbar.OptionShowCount(), progressbar.OptionUseIECUnits(true),
				progressbar.OptionShowTotalBytes(true), progressbar.OptionSetPredictTime(true), progressbar.OptionShowElapsedTimeOnFinish())
		} else {
			opts = append(opts, progressbar.OptionSpinnerType(14), progressbar.OptionSetPredictTime(false))
		}
		max := total
		if total == 0 {
			max = 1 // the bar refuses a maximum of 0; an empty backup is done at once
		}
		p.bar = progressbar.NewOptions64(max, opts...)
		p.bar.RenderBlank()
	default:
		p.plain = w
		p.stop = make(chan struct{})
		p.wg.Add(1)
		go p.lines()
	}
	return p
}

// set records how many bytes are done; backup.Restore calls it from its
// own goroutine.
func (p *progress) set(done int64) {
	p.mu.Lock()
	p.done = done
	p.mu.Unlock()
	if p.bar != nil {
		p.bar.Set64(min(done, p.bar.GetMax64()))
	}
}

// describe says what an operation of unknown size is doing now.
func (p *progress) describe(detail string) {
	p.mu.Lock()
	changed := p.detail != detail
	p.detail = detail
	p.mu.Unlock()
	if p.bar != nil && changed {
		p.bar.Describe(p.what + ": " + detail)
	}
}

func (p *progress) lines() {
	defer p.wg.Done()
	t := time.NewTicker(plainInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			fmt.Fprintln(p.plain, p.lineLocked(false))
			p.printed = true
			p.mu.Unlock()
		}
	}
}

// lineLocked is one plain progress line.
func (p *progress) lineLocked(final bool) string {
	el := time.Since(p.start)
	secs := max(el.Seconds(), 0.001)
	if p.total < 0 {
		s := fmt.Sprintf("%s: %s", p.what, el.Round(time.Second))
		if p.detail != "" {
			s += ", " + p.detail
		}
		if final {
			s += ", finished"
		}
		return s
	}
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(p.done) / float64(p.total)
	}
	rate := float64(p.done) / secs
	s := fmt.Sprintf("%s: %s of %s (%.0f%%), %s/s", p.what, mib(p.done), mib(p.total), pct, mib(int64(rate)))
	if final {
		return s + fmt.Sprintf(", in %s", el.Round(100*time.Millisecond))
	}
	if rate > 0 && p.done < p.total {
		left := time.Duration(float64(p.total-p.done) / rate * float64(time.Second))
		s += fmt.Sprintf(", about %s left", left.Round(time.Second))
	}
	return s
}

// finish ends the report: the bar filled (or left where it stopped, on
// failure) and its line ended; in plain mode a last line if any were
// written.
func (p *progress) finish(ok bool) {
	switch {
	case p.bar != nil:
		// Either ends the bar's line (OptionOnCompletion).
		if ok {
			p.bar.Finish()
		} else {
			p.bar.Exit()
		}
	case p.plain != nil:
		close(p.stop)
		p.wg.Wait()
		p.mu.Lock()
		if p.printed && ok {
			fmt.Fprintln(p.plain, p.lineLocked(true))
		}
		p.mu.Unlock()
	}
}
