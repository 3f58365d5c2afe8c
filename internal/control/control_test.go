package control

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type echoArgs struct {
	Text string `json:"text"`
}

func pair(t *testing.T, parent, child Options) (*Peer, *Peer) {
	t.Helper()
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	pa, err := New(a, parent)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := New(b, child)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go pa.Serve(ctx)
	go pb.Serve(ctx)
	t.Cleanup(func() { cancel(); pa.Close(); pb.Close() })
	return pa, pb
}

var echo = map[string]Handler{
	"echo": func(_ context.Context, raw json.RawMessage, fds []*os.File) (any, []*os.File, error) {
		var a echoArgs
		if err := Decode(raw, &a); err != nil {
			return nil, nil, err
		}
		if a.Text == "" {
			return nil, nil, errors.New("text: empty")
		}
		return echoArgs{Text: strings.ToUpper(a.Text)}, nil, nil
	},
	"pipe": func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, nil, err
		}
		go func() { w.WriteString("through the descriptor"); w.Close() }()
		return nil, []*os.File{r}, nil
	},
	"panic": func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
		panic("injected")
	},
}

func TestCallsBothWaysWithDescriptors(t *testing.T) {
	self := Creds{Pid: int32(os.Getpid()), UID: uint32(os.Getuid())}
	parent, child := pair(t, Options{Name: "test", Want: self, Handlers: echo}, Options{Name: "pid1", Handlers: echo})
	ctx := context.Background()
	for _, p := range []*Peer{parent, child} {
		var out echoArgs
		if _, err := p.Call(ctx, "echo", echoArgs{Text: "hello"}, &out); err != nil || out.Text != "HELLO" {
			t.Fatalf("echo: %q %v", out.Text, err)
		}
		if _, err := p.Call(ctx, "echo", echoArgs{}, &out); err == nil || !strings.Contains(err.Error(), "text: empty") {
			t.Fatalf("a refused request: %v", err)
		}
		fds, err := p.Call(ctx, "pipe", nil, nil)
		if err != nil || len(fds) != 1 {
			t.Fatalf("pipe: %v, %d descriptors", err, len(fds))
		}
		b, _ := io.ReadAll(fds[0])
		fds[0].Close()
		if string(b) != "through the descriptor" {
			t.Fatalf("read %q through the passed descriptor", b)
		}
		if _, err := p.Call(ctx, "panic", nil, nil); err == nil || !strings.Contains(err.Error(), "internal error: injected") {
			t.Fatalf("a panicking handler: %v", err)
		}
		if _, err := p.Call(ctx, "format disks", nil, nil); err == nil || !strings.Contains(err.Error(), `unknown operation "format disks"`) {
			t.Fatalf("an unknown operation: %v", err)
		}
	}
	// Concurrent calls are matched to their replies.
	var wg sync.WaitGroup
	for i := 0; i < MaxInFlight-2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			txt := strings.Repeat("a", i+1)
			var out echoArgs
			if _, err := child.Call(ctx, "echo", echoArgs{Text: txt}, &out); err != nil || out.Text != strings.ToUpper(txt) {
				t.Errorf("concurrent echo %d: %q %v", i, out.Text, err)
			}
		}()
	}
	wg.Wait()
}

// TestUntrustedMessages: what the other end sends raw is refused when it
// is malformed, carries unknown fields or trailing data, or is too big;
// the connection keeps working.
func TestUntrustedMessages(t *testing.T) {
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var rejects []string
	p, err := New(a, Options{Name: "svc", Handlers: echo, OnReject: func(r string) { mu.Lock(); rejects = append(rejects, r); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(context.Background())
	defer p.Close()
	raw := int(b.Fd())
	for _, m := range []string{
		`{"id":1,"op":"echo","args":{"text":"x","extra":1}}`, // reaches the handler's strict decode
		`{"id":2,"op":"echo","args":{"text":"x"},"sudo":true}`,
		`{"id":3,"op":"echo"} {"id":4}`,
		`not json`,
		`{"id":5,"reply":true}`, // a reply to nothing
		strings.Repeat(" ", MaxMessage+10),
	} {
		if err := unix.Sendmsg(raw, []byte(m), nil, nil, 0); err != nil {
			t.Fatal(err)
		}
	}
	unix.Sendmsg(raw, []byte(`{"id":9,"op":"echo","args":{"text":"still here"}}`), nil, nil, 0)
	buf := make([]byte, MaxMessage)
	var replies []string
	deadline := time.Now().Add(5 * time.Second)
	unix.SetsockoptTimeval(raw, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	for time.Now().Before(deadline) && len(replies) < 2 {
		n, _, _, _, err := unix.Recvmsg(raw, buf, nil, 0)
		if err != nil {
			break
		}
		replies = append(replies, string(buf[:n]))
	}
	if len(replies) != 2 || !strings.Contains(replies[0]+replies[1], `unknown field \"extra\"`) || !strings.Contains(replies[0]+replies[1], "STILL HERE") {
		t.Errorf("replies: %q; want the strict decode's refusal of id 1 and the answer to id 9", replies)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(rejects) != 5 {
		t.Errorf("%d messages dropped, want 5:\n%s", len(rejects), strings.Join(rejects, "\n"))
	}
}

// TestWrongSenderDropped: PID1's end drops every message whose kernel-
// attached credentials are not the service's.
func TestWrongSenderDropped(t *testing.T) {
	var mu sync.Mutex
	var rejects []string
	notUs := Creds{Pid: int32(os.Getpid()) + 1, UID: 12345}
	parent, child := pair(t, Options{Name: "svc", Want: notUs, Handlers: echo, OnReject: func(r string) { mu.Lock(); rejects = append(rejects, r); mu.Unlock() }},
		Options{Name: "pid1"})
	_ = parent
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := child.Call(ctx, "echo", echoArgs{Text: "x"}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a message from the wrong sender was answered: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(rejects) != 1 || !strings.Contains(rejects[0], "not from pid") {
		t.Fatalf("rejects: %q", rejects)
	}
}

// TestInFlightBound: past MaxInFlight requests under way, the next is
// answered "busy" at once instead of starting another goroutine.
func TestInFlightBound(t *testing.T) {
	release := make(chan struct{})
	h := map[string]Handler{"block": func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
		<-release
		return nil, nil, nil
	}}
	server, client := pair(t, Options{Name: "svc", Handlers: h}, Options{Name: "pid1"})
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := 0; i < MaxInFlight; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); client.Call(ctx, "block", nil, nil) }()
	}
	for deadline := time.Now().Add(5 * time.Second); len(server.inflight) < MaxInFlight; {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests under way, want %d", len(server.inflight), MaxInFlight)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := client.Call(ctx, "block", nil, nil); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Errorf("request %d: %v; want busy", MaxInFlight+1, err)
	}
	close(release)
	wg.Wait()
}

// TestKeyMaterial: key material sent with CallSecret reaches the handler
// of an end that accepts secrets, in a locked buffer; an end that does not accept them, a reply or an unknown
// operation refuses the message, and the sender refuses empty or
// oversized material.
func TestKeyMaterial(t *testing.T) {
	var mu sync.Mutex
	var seen []byte
	handlers := map[string]Handler{
		"key": func(ctx context.Context, _ json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			sec := SecretFrom(ctx)
			if sec == nil {
				return nil, nil, errors.New("no key material")
			}
			mu.Lock()
			seen = append([]byte(nil), sec.Bytes()...)
			mu.Unlock()
			return echoArgs{Text: "ok"}, nil, nil
		},
	}
	var rejects []string
	var rmu sync.Mutex
	onReject := func(r string) { rmu.Lock(); rejects = append(rejects, r); rmu.Unlock() }
	self := Creds{Pid: int32(os.Getpid()), UID: uint32(os.Getuid())}
	handlers["plain"] = func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) { return nil, nil, nil }
	pid1, svc := pair(t, Options{Name: "svc", Want: self, Handlers: handlers, SecretOps: []string{"key"}, OnReject: onReject},
		Options{Name: "pid1", Handlers: handlers, OnReject: onReject})
	ctx := context.Background()
	key := []byte("0123456789abcdef0123456789abcdef\x00\x01\x02\x03")
	var out echoArgs
	if err := svc.CallSecret(ctx, "key", struct{}{}, key, &out); err != nil || out.Text != "ok" {
		t.Fatalf("CallSecret: %q %v", out.Text, err)
	}
	mu.Lock()
	if string(seen) != string(key) {
		t.Errorf("the handler saw %x, want %x", seen, key)
	}
	mu.Unlock()
	if SecretFrom(ctx) != nil {
		t.Fatal("SecretFrom outside a handler")
	}
	// Without a request handler for it, to an operation not listed, or
	// to an end without SecretOps.
	if err := svc.CallSecret(ctx, "nothing", nil, key, nil); err == nil {
		t.Error("key material to an unknown operation was accepted")
	}
	if err := svc.CallSecret(ctx, "plain", nil, key, nil); err == nil {
		t.Error("key material to an operation not in SecretOps was accepted")
	}
	// An end without SecretOps drops the datagram as malformed: no reply.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := pid1.CallSecret(short, "key", nil, key, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("an end without SecretOps: %v, want no answer", err)
	}
	rmu.Lock()
	if len(rejects) != 3 {
		t.Errorf("refusals recorded: %q, want 3", rejects)
	}
	rmu.Unlock()
	for _, bad := range [][]byte{nil, make([]byte, MaxSecret+1)} {
		if err := svc.CallSecret(ctx, "key", nil, bad, nil); err == nil || !strings.Contains(err.Error(), "key material") {
			t.Errorf("%d bytes of key material: %v", len(bad), err)
		}
	}
}

// TestSendTimeoutClosesPID1End: a service that stops reading cannot hold
// PID1's goroutines: once PID1's end cannot send for sendTimeout, it
// closes the connection (which ends the service) and says so.
func TestSendTimeoutClosesPID1End(t *testing.T) {
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close() // the service's end: never read
	var mu sync.Mutex
	var rejects []string
	self := Creds{Pid: int32(os.Getpid()), UID: uint32(os.Getuid())}
	pid1, err := New(a, Options{Name: "svc", Want: self, OnReject: func(r string) { mu.Lock(); rejects = append(rejects, r); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	go pid1.Serve(context.Background())
	defer pid1.Close()
	big := echoArgs{Text: strings.Repeat("x", MaxMessage-100)}
	for i := 0; i < 64; i++ {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			pid1.Call(ctx, "echo", big, nil)
		}()
	}
	select {
	case <-pid1.Done():
	case <-time.After(sendTimeout + 10*time.Second):
		t.Fatal("PID1's end still waits on a service that does not read")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(rejects) == 0 || !strings.Contains(strings.Join(rejects, "\n"), "has not read for") {
		t.Errorf("refusals: %q; want the closed connection said", rejects)
	}
}
