package mgmt

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/audit"
)

// rec is a record with the seq of the one it completes, if any.
type rec struct {
	audit.Record
	Ref uint64 `json:"ref"`
}

// records parses the log as the node holds it.
func records(t *testing.T, l *audit.Log) []rec {
	t.Helper()
	var recs []rec
	dec := json.NewDecoder(bytes.NewReader(l.Bytes()))
	for dec.More() {
		var r rec
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	return recs
}

// A request whose audit record cannot be written is refused, and what it
// asked for is not done: the management API fails closed.
func TestAuditFailureRefusesRequest(t *testing.T) {
	e := setup(t)
	if err := e.log.Attach(filepath.Join(t.TempDir(), "audit.log")); err != nil {
		t.Fatal(err)
	}
	// From here on no record can be written.
	e.log.Close()
	for _, c := range []struct{ who, method, path, body string }{
		{"control", "PUT", "/v1/allowlist", `{"clients":["10.0.0.0/8"]}`},
		{"control", "POST", "/v1/shutdown", `{"wipe": true}`},
		{"operator", "GET", "/v1/status", ``},
		{"operator", "GET", "/v1/audit", ``},
		{"operator", "PUT", "/v1/allowlist", `{"clients":["10.0.0.0/8"]}`},
	} {
		code, body, err := e.call(t, c.who, c.method, c.path, c.body)
		if err != nil || code != 503 || !strings.Contains(body, "audit log") {
			t.Errorf("%s %s %s with no audit log: %d %s %v; want 503 naming the audit log", c.who, c.method, c.path, code, strings.TrimSpace(body), err)
		}
	}
	time.Sleep(400 * time.Millisecond)
	if got := e.node.Allowlist(); len(got) != 1 || got[0] != "0.0.0.0/0" {
		t.Errorf("an unaudited call changed the allowlist: %v", got)
	}
	e.node.mu.Lock()
	defer e.node.mu.Unlock()
	if e.node.shutdown != "" {
		t.Errorf("an unaudited call shut the node down: %q", e.node.shutdown)
	}
}

// The request (who, what) is in the log before its action runs: an action
// that blocks, or panics, still leaves its record.
func TestAuditRecordedBeforeAction(t *testing.T) {
	e := setup(t)
	entered, release := make(chan struct{}), make(chan struct{})
	e.node.backup = func() error {
		close(entered)
		<-release
		return nil
	}
	done := make(chan int)
	go func() {
		code, _, _ := e.call(t, "control", "POST", "/v1/backup", "")
		done <- code
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the backup action never ran")
	}
	var started *rec
	for _, r := range records(t, e.log) {
		if r.What == "POST /v1/backup" && strings.Contains(r.Who, "CN=robot") {
			started = &r
		}
	}
	if started == nil || started.Result != "started" {
		close(release)
		t.Fatalf("while the action runs the log has no started record for it: %+v\n%s", started, e.log.Bytes())
	}
	close(release)
	if code := <-done; code != 202 {
		t.Fatalf("backup: %d", code)
	}
	recs := records(t, e.log)
	last := recs[len(recs)-1]
	if last.What != "POST /v1/backup" || last.Result != "202 ok" || last.Ref != started.Seq {
		t.Fatalf("the result record %+v does not complete started record %d", last, started.Seq)
	}

	// A panicking action: the started record is there, and so is its end.
	e.node.backup = func() error { panic("boom") }
	if code, _, err := e.call(t, "control", "POST", "/v1/backup", ""); err == nil {
		t.Fatalf("a panicking action answered %d", code)
	}
	recs = records(t, e.log)
	var n int
	for _, r := range recs[len(recs)-2:] {
		if r.What == "POST /v1/backup" {
			n++
		}
	}
	if n != 2 || recs[len(recs)-2].Result != "started" || !strings.Contains(recs[len(recs)-1].Result, "panic") {
		t.Fatalf("a panicking action's records: %+v", recs[len(recs)-2:])
	}
}

// A flood of refused handshakes from one source makes a bounded number of
// records, and one that counts the rest; it cannot keep the node busy
// with a synchronous write per attempt.
func TestHandshakeFloodRateLimited(t *testing.T) {
	e := setup(t)
	const attempts = 200
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := 0; i < attempts; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.s.Addr().String(),
				&tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1"})
			if err == nil {
				// TLS 1.3: the refusal arrives with the first read.
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Read(make([]byte, 1))
				c.Close()
			}
		}()
	}
	wg.Wait()
	refusals := func() (one, counted int, counter string) {
		for _, r := range records(t, e.log) {
			if r.What != "management TLS handshake" {
				continue
			}
			if strings.Contains(r.Result, "suppressed") {
				counter = r.Result
				continue
			}
			one++
		}
		return one, 0, counter
	}
	// Wait until the node has dealt with every attempt.
	settle := func() {
		prev := -1
		for stable := 0; stable < 3; time.Sleep(100 * time.Millisecond) {
			n := len(records(t, e.log))
			if n == prev {
				stable++
			} else {
				stable = 0
			}
			prev = n
		}
	}
	settle()
	e.s.Close()
	settle()
	one, _, counter := refusals()
	if one > 20 {
		t.Errorf("%d refused handshakes from one source made %d records each with an fsync; want a bounded number", attempts, one)
	}
	if counter == "" || !strings.Contains(counter, "127.0.0.1") {
		t.Errorf("no record counts the suppressed refusals (%q)", counter)
	}
	t.Logf("%d attempts: %d records, counter %q", attempts, one, counter)
}
