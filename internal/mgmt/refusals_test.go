package mgmt

import (
	"net"
	"strings"
	"testing"
	"time"
)

// The limiter: a burst per source, refilled over time; the count of the
// suppressed comes with the next record, or from drain; IPv6 sources
// count per /64; the map of sources stays bounded.
func TestRefusalLimiter(t *testing.T) {
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	q := newRefusals(func() time.Time { return at })
	a := source(&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 4000})
	got := 0
	for i := 0; i < 100; i++ {
		if ok, c := q.allow(a); ok {
			got++
			if c != nil {
				t.Fatalf("a count before anything was suppressed: %+v", c)
			}
		}
	}
	if got != refusalBurst {
		t.Fatalf("%d records from one source at once, want %d", got, refusalBurst)
	}
	at = at.Add(refusalEvery)
	ok, c := q.allow(a)
	if !ok || c == nil || c.n != 100-refusalBurst || c.src != "192.0.2.7" {
		t.Fatalf("after a refill: %v %+v", ok, c)
	}
	q.allow(a) // suppressed again
	if cs := q.drain(); len(cs) != 1 || cs[0].n != 1 || !strings.Contains(cs[0].result(), "1 refused handshakes from 192.0.2.7") {
		t.Fatalf("drain: %+v", cs)
	}
	if cs := q.drain(); len(cs) != 0 {
		t.Fatalf("a second drain: %+v", cs)
	}

	// Two addresses of one /64 are one source.
	x := source(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2::1"), Port: 1})
	y := source(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::9"), Port: 2})
	if x != y || sourceName(x) != "2001:db8:1:2::/64" {
		t.Fatalf("%v %v", x, y)
	}

	// Many sources: the map stays bounded, the rest share one entry,
	// and the total rate holds over all of them.
	at = at.Add(time.Hour)
	q = newRefusals(func() time.Time { return at })
	got = 0
	for i := 0; i < 3*refusalSources; i++ {
		ip := net.IPv4(10, byte(i>>16), byte(i>>8), byte(i))
		if ok, _ := q.allow(source(&net.TCPAddr{IP: ip, Port: 1})); ok {
			got++
		}
	}
	if len(q.srcs) > refusalSources {
		t.Fatalf("%d sources tracked", len(q.srcs))
	}
	if got != refusalTotalBurst {
		t.Fatalf("%d records at once over many sources, want %d", got, refusalTotalBurst)
	}
	var total uint64
	names := map[string]bool{}
	for _, c := range q.drain() {
		total += c.n
		names[c.src] = true
	}
	if total != uint64(3*refusalSources-got) || !names["other sources"] {
		t.Fatalf("counted %d suppressed, want %d; sources %d", total, 3*refusalSources-got, len(names))
	}
	// Quiet sources are forgotten.
	at = at.Add(time.Duration(refusalBurst) * refusalEvery)
	q.drain()
	if len(q.srcs) != 0 {
		t.Fatalf("%d quiet sources still tracked", len(q.srcs))
	}
}

// Close returns promptly even when Serve never ran (the goroutine that
// writes the counts is the server's from Listen on).
func TestCloseWithoutServe(t *testing.T) {
	e := setup(t)
	s, err := Listen(Options{Addr: "127.0.0.1:0", CA: e.s.o.CA, Cert: e.s.o.Cert, Audit: e.log, Node: e.node})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	s.Close()
	if d := time.Since(t0); d > time.Second {
		t.Fatalf("Close took %v", d)
	}
}
