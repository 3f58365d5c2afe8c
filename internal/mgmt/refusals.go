package mgmt

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Every audit record is flushed to disk before the next one is written,
// so a record per refused handshake would let anyone who can reach the
// management port keep the log, and every request waiting on it, busy.
// Refusals are therefore recorded one by one only up to a rate, per
// source and over all sources; the rest are counted, and the count goes
// into the log as one record ("N refused handshakes from X suppressed").
const (
	refusalBurst      = 10              // records a source may make at once
	refusalEvery      = 6 * time.Second // and then one per this long
	refusalTotalBurst = 50              // over all sources
	refusalTotalEvery = 100 * time.Millisecond
	refusalSources    = 1024        // sources tracked; more share one entry
	refusalFlushEvery = time.Minute // counts are written at least this often
)

// bucket is a token bucket with the refusals it did not let through.
type bucket struct {
	tokens     float64
	last       time.Time
	suppressed uint64
	since      time.Time // the first suppressed refusal
}

// take refills the bucket for the time since it was last used and takes
// one token if there is one.
func (b *bucket) take(now time.Time, burst int, every time.Duration) bool {
	if b.last.IsZero() {
		b.tokens = float64(burst)
	} else {
		b.tokens = min(float64(burst), b.tokens+float64(now.Sub(b.last))/float64(every))
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// full says whether the bucket has refilled completely: its source has
// been quiet long enough to be forgotten.
func (b *bucket) full(now time.Time, burst int, every time.Duration) bool {
	return b.last.IsZero() || b.tokens+float64(now.Sub(b.last))/float64(every) >= float64(burst)
}

// refusals decides which refused handshakes get a record of their own.
type refusals struct {
	mu    sync.Mutex
	now   func() time.Time
	srcs  map[netip.Prefix]*bucket
	other bucket // every source beyond refusalSources
	total bucket // all sources together
}

func newRefusals(now func() time.Time) *refusals {
	return &refusals{now: now, srcs: map[netip.Prefix]*bucket{}}
}

// count is a number of refusals from one source that had no record.
type count struct {
	src   string
	n     uint64
	since time.Time
}

func (c count) result() string {
	return fmt.Sprintf("suppressed: %d refused handshakes from %s since %s were not recorded one by one",
		c.n, c.src, c.since.UTC().Format(time.RFC3339))
}

// source is the key a remote address counts under: the IPv4 address, or
// the IPv6 /64 (one host holds a whole /64 as easily as one address).
func source(addr net.Addr) netip.Prefix {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Prefix{}
	}
	a := ap.Addr().Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

func sourceName(p netip.Prefix) string {
	switch {
	case !p.IsValid():
		return "other sources"
	case p.Addr().Is4():
		return p.Addr().String()
	}
	return p.String()
}

// allow says whether a refusal from src gets a record of its own. When it
// does and earlier ones from the same source were suppressed, it returns
// their count too, to be recorded first.
func (q *refusals) allow(src netip.Prefix) (bool, *count) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	b, name := q.bucketFor(src, now)
	if !b.take(now, refusalBurst, refusalEvery) || !q.total.take(now, refusalTotalBurst, refusalTotalEvery) {
		if b.suppressed == 0 {
			b.since = now
		}
		b.suppressed++
		return false, nil
	}
	if b.suppressed == 0 {
		return true, nil
	}
	c := &count{src: name, n: b.suppressed, since: b.since}
	b.suppressed = 0
	return true, c
}

// bucketFor finds or makes src's bucket; once refusalSources sources are
// tracked, new ones share one bucket (named "other sources").
func (q *refusals) bucketFor(src netip.Prefix, now time.Time) (*bucket, string) {
	if !src.IsValid() {
		return &q.other, sourceName(src)
	}
	if b, ok := q.srcs[src]; ok {
		return b, sourceName(src)
	}
	if len(q.srcs) >= refusalSources {
		q.forget(now)
	}
	if len(q.srcs) >= refusalSources {
		return &q.other, sourceName(netip.Prefix{})
	}
	b := &bucket{}
	q.srcs[src] = b
	return b, sourceName(src)
}

// forget drops the sources that have been quiet long enough and have
// nothing suppressed.
func (q *refusals) forget(now time.Time) {
	for p, b := range q.srcs {
		if b.suppressed == 0 && b.full(now, refusalBurst, refusalEvery) {
			delete(q.srcs, p)
		}
	}
}

// drain returns the suppressed counts of every source and clears them, so
// that the log says what was suppressed even when a flood has stopped.
func (q *refusals) drain() []count {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []count
	for p, b := range q.srcs {
		if b.suppressed > 0 {
			out = append(out, count{src: sourceName(p), n: b.suppressed, since: b.since})
			b.suppressed = 0
		}
	}
	if q.other.suppressed > 0 {
		out = append(out, count{src: sourceName(netip.Prefix{}), n: q.other.suppressed, since: q.other.since})
		q.other.suppressed = 0
	}
	q.forget(q.now())
	return out
}
