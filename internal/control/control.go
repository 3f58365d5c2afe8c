// Package control is the protocol between PID1 and the node's services:
// one AF_UNIX SOCK_SEQPACKET socketpair per service, whose other end only
// that service's process holds. Each datagram is one JSON message, at most
// MaxMessage bytes, with at most MaxFDs descriptors attached (SCM_RIGHTS).
// Either end may send requests; each request gets exactly one reply with
// the same id. PID1's end receives every message with the sender's
// credentials, filled in by the kernel (SO_PASSCRED), and drops a message
// whose pid or uid is not the service's. Everything received is untrusted:
// unknown fields, trailing data, oversized messages and unknown operations
// are refused. The operations themselves and who may call them are listed
// in docs/control.md.
package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/safego"
	"github.com/bulwarkvm/bulwark/internal/secret"
)

// Limits of one message, and of the requests handled at once.
const (
	MaxMessage  = 64 << 10
	MaxFDs      = 4
	MaxInFlight = 32
	// MaxSecret bounds the key material one request carries (CallSecret).
	MaxSecret = 128
)

// OpReady is what every service calls once it has confined itself and
// serves; its argument is the service's sandbox.Report.
const OpReady = "service.ready"

// ErrClosed is returned by calls on a closed or broken connection.
var ErrClosed = errors.New("control: connection closed")

// message is the wire form of requests and replies.
type message struct {
	ID     uint64          `json:"id"`
	Op     string          `json:"op,omitempty"`
	Reply  bool            `json:"reply,omitempty"`
	Args   json.RawMessage `json:"args,omitempty"`
	Err    string          `json:"err,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// Handler serves one operation: args is the request's raw arguments (decode
// them with Decode), fds what came attached. It returns the result (any
// JSON-encodable value, or nil) and descriptors to attach to the reply;
// they are closed once sent.
type Handler func(ctx context.Context, args json.RawMessage, fds []*os.File) (result any, out []*os.File, err error)

// Creds identify the only process allowed to send on a connection; zero
// means no check (a service's end, whose only peer is PID1).
type Creds struct {
	Pid int32
	UID uint32
}

// Peer is one end of a control connection.
type Peer struct {
	fd        int
	name      string
	want      Creds
	handlers  map[string]Handler
	onReject  func(reason string)
	secrets   bool
	secretOps map[string]bool

	wmu      sync.Mutex
	mu       sync.Mutex
	nextID   uint64
	pending  map[uint64]chan reply
	inflight chan struct{}
	closed   bool
	done     chan struct{}
}

type reply struct {
	msg message
	fds []*os.File
}

// Pair makes a socketpair: the first end stays with the caller, the
// second is for the child (pass it as an inherited descriptor).
func Pair() (mine, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("control: socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "control"), os.NewFile(uintptr(fds[1]), "control"), nil
}

// Options configure a Peer.
type Options struct {
	Name     string // for errors and logs: the service's name
	Want     Creds  // the sender every received message must come from
	Handlers map[string]Handler
	// OnReject hears every message dropped as malformed or from the
	// wrong sender (PID1 logs and audits them).
	OnReject func(reason string)
	// SecretOps are the operations whose requests may carry key
	// material (CallSecret). With any, this end receives into locked
	// memory, hands the material to the handler in a locked buffer
	// (SecretFrom) and zeroes both. Key material on any other message is
	// refused (as malformed JSON where there are none).
	SecretOps []string
}

// New makes a Peer on f (one end of Pair), which it takes over.
func New(f *os.File, o Options) (*Peer, error) {
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	unix.CloseOnExec(fd)
	if o.Want != (Creds{}) {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("control: SO_PASSCRED: %w", err)
		}
	}
	if o.OnReject == nil {
		o.OnReject = func(string) {}
	}
	if o.Want != (Creds{}) {
		// PID1's end never waits long on a service that does not read
		// its replies: a send that cannot complete within sendTimeout
		// ends the connection (and so the service, which PID1
		// restarts), instead of holding PID1's goroutines.
		tv := unix.NsecToTimeval(sendTimeout.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("control: SO_SNDTIMEO: %w", err)
		}
	}
	var secretOps map[string]bool
	for _, op := range o.SecretOps {
		if secretOps == nil {
			secretOps = map[string]bool{}
		}
		secretOps[op] = true
	}
	return &Peer{fd: fd, name: o.Name, want: o.Want, handlers: o.Handlers, onReject: o.OnReject, secrets: secretOps != nil, secretOps: secretOps,
		pending: map[uint64]chan reply{}, inflight: make(chan struct{}, MaxInFlight), done: make(chan struct{})}, nil
}

// Done is closed when the connection has ended.
func (p *Peer) Done() <-chan struct{} { return p.done }

// Close ends the connection; pending calls fail with ErrClosed.
func (p *Peer) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for id, ch := range p.pending {
		close(ch)
		delete(p.pending, id)
	}
	p.mu.Unlock()
	unix.Shutdown(p.fd, unix.SHUT_RDWR)
	return nil
}

// Serve reads messages until the connection ends: requests are handled,
// each in its own goroutine, replies go to their callers. It returns nil
// when the other end closed, and closes the descriptor.
func (p *Peer) Serve(ctx context.Context) error {
	defer close(p.done)
	defer unix.Close(p.fd)
	defer p.Close()
	buf := make([]byte, MaxMessage+1)
	if p.secrets {
		lb, err := secret.New(MaxMessage + 1)
		if err != nil {
			return fmt.Errorf("control %s: %w", p.name, err)
		}
		defer lb.Destroy()
		buf = lb.Bytes()
	}
	oob := make([]byte, unix.CmsgSpace(MaxFDs*4)+unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, flags, _, err := unix.Recvmsg(p.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			p.mu.Lock()
			closed := p.closed
			p.mu.Unlock()
			if closed {
				return nil
			}
			return fmt.Errorf("control %s: receive: %w", p.name, err)
		}
		if n == 0 && oobn == 0 {
			return nil // the other end closed
		}
		// A refused datagram may carry key material: zero it.
		wipe := func() {
			if p.secrets {
				clear(buf[:min(n, len(buf))])
			}
		}
		fds, creds, cerr := parseOOB(oob[:oobn])
		if cerr != nil || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > MaxMessage {
			wipe()
			closeAll(fds)
			p.onReject(fmt.Sprintf("control %s: a message of %d bytes, flags %#x, control data %v: refused", p.name, n, flags, cerr))
			continue
		}
		if p.want != (Creds{}) && (creds == nil || creds.Pid != p.want.Pid || creds.Uid != p.want.UID) {
			wipe()
			closeAll(fds)
			p.onReject(fmt.Sprintf("control %s: a message from %s, not from pid %d uid %d: dropped", p.name, credString(creds), p.want.Pid, p.want.UID))
			continue
		}
		var m message
		sec, err := p.decodeMessage(buf[:n], &m)
		if err != nil {
			closeAll(fds)
			p.onReject(fmt.Sprintf("control %s: %v", p.name, err))
			continue
		}
		if sec != nil && (m.Reply || p.handlers[m.Op] == nil || !p.secretOps[m.Op]) {
			sec.Destroy()
			closeAll(fds)
			p.onReject(fmt.Sprintf("control %s: key material on a message that takes none: refused", p.name))
			if !m.Reply {
				p.send(message{ID: m.ID, Reply: true, Err: fmt.Sprintf("unknown operation %q", m.Op)}, nil)
			}
			continue
		}
		if m.Reply {
			p.mu.Lock()
			ch := p.pending[m.ID]
			delete(p.pending, m.ID)
			p.mu.Unlock()
			if ch == nil {
				closeAll(fds)
				p.onReject(fmt.Sprintf("control %s: a reply to no request (id %d)", p.name, m.ID))
				continue
			}
			ch <- reply{m, fds}
			continue
		}
		// At most MaxInFlight requests are handled at once; past that
		// the request is answered "busy" at once, so that the other end
		// cannot make this one start goroutines without bound.
		select {
		case p.inflight <- struct{}{}:
			safego.Go("control "+p.name+" "+m.Op, func() {
				defer func() { <-p.inflight }()
				defer sec.Destroy()
				hctx := ctx
				if sec != nil {
					hctx = context.WithValue(ctx, secretKey{}, sec)
				}
				p.handle(hctx, m, fds)
			})
		default:
			sec.Destroy()
			closeAll(fds)
			if err := p.send(message{ID: m.ID, Reply: true, Err: "busy: too many requests under way"}, nil); err != nil {
				p.onReject(fmt.Sprintf("control %s: replying busy: %v", p.name, err))
			}
		}
	}
}

// decodeMessage decodes one datagram. With SecretOps set, the JSON may be
// followed by a NUL byte and key material (a NUL never appears in JSON
// text); the material is moved into a locked buffer and the datagram's
// bytes are zeroed.
func (p *Peer) decodeMessage(b []byte, m *message) (*secret.Buf, error) {
	if !p.secrets {
		return nil, Decode(b, m)
	}
	defer clear(b)
	text, material, has := bytes.Cut(b, []byte{0})
	if err := Decode(text, m); err != nil {
		return nil, err
	}
	if !has {
		return nil, nil
	}
	if len(material) == 0 || len(material) > MaxSecret {
		return nil, fmt.Errorf("malformed message: %d bytes of key material, want 1 to %d", len(material), MaxSecret)
	}
	sec, err := secret.New(len(material))
	if err != nil {
		return nil, err
	}
	copy(sec.Bytes(), material)
	return sec, nil
}

type secretKey struct{}

// SecretFrom is the key material a request carried (nil if none), for
// the handler serving it. The buffer is zeroed and unmapped when the
// handler returns: a handler must copy what it keeps (into a locked
// buffer of its own), never keep the slice, which would then fault.
func SecretFrom(ctx context.Context) *secret.Buf {
	b, _ := ctx.Value(secretKey{}).(*secret.Buf)
	return b
}

func (p *Peer) handle(ctx context.Context, m message, fds []*os.File) {
	defer closeAll(fds)
	out := message{ID: m.ID, Reply: true}
	var outFDs []*os.File
	h, ok := p.handlers[m.Op]
	if !ok {
		out.Err = fmt.Sprintf("unknown operation %q", m.Op)
		p.onReject(fmt.Sprintf("control %s: %s", p.name, out.Err))
	} else {
		res, files, err := safeHandle(h, ctx, m.Args, fds)
		outFDs = files
		if err != nil {
			out.Err = err.Error()
		} else if res != nil {
			b, err := json.Marshal(res)
			if err != nil {
				out.Err = "encoding the result: " + err.Error()
			} else {
				out.Result = b
			}
		}
	}
	defer closeAll(outFDs)
	if err := p.send(out, outFDs); err != nil {
		p.onReject(fmt.Sprintf("control %s: replying to %s: %v", p.name, m.Op, err))
	}
}

// safeHandle runs a handler; a panic in it becomes an error reply, never
// the end of the process that serves the connection.
func safeHandle(h Handler, ctx context.Context, args json.RawMessage, fds []*os.File) (res any, out []*os.File, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, out, err = nil, nil, fmt.Errorf("internal error: %v", r)
		}
	}()
	return h(ctx, args, fds)
}

// Call sends a request and waits for its reply. The reply's descriptors
// are returned; the caller closes them.
func (p *Peer) Call(ctx context.Context, op string, args, result any) ([]*os.File, error) {
	return p.CallFDs(ctx, op, args, nil, result)
}

// CallFDs is Call with descriptors attached to the request.
func (p *Peer) CallFDs(ctx context.Context, op string, args any, fds []*os.File, result any) ([]*os.File, error) {
	return p.call(ctx, op, args, fds, nil, result)
}

func (p *Peer) call(ctx context.Context, op string, args any, fds []*os.File, material []byte, result any) ([]*os.File, error) {
	var raw json.RawMessage
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("control: %s: %w", op, err)
		}
		raw = b
	}
	ch := make(chan reply, 1)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	p.nextID++
	id := p.nextID
	p.pending[id] = ch
	p.mu.Unlock()
	if err := p.sendWith(message{ID: id, Op: op, Args: raw}, fds, material); err != nil {
		p.mu.Lock()
		delete(p.pending, id)
		p.mu.Unlock()
		return nil, fmt.Errorf("control %s: %s: %w", p.name, op, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, ErrClosed
		}
		if r.msg.Err != "" {
			closeAll(r.fds)
			return nil, &RemoteError{Op: op, Msg: r.msg.Err}
		}
		if result != nil {
			if len(r.msg.Result) == 0 {
				closeAll(r.fds)
				return nil, fmt.Errorf("control %s: %s: an empty result", p.name, op)
			}
			if err := Decode(r.msg.Result, result); err != nil {
				closeAll(r.fds)
				return nil, fmt.Errorf("control %s: %s: %w", p.name, op, err)
			}
		}
		return r.fds, nil
	case <-ctx.Done():
		p.mu.Lock()
		delete(p.pending, id)
		p.mu.Unlock()
		return nil, ctx.Err()
	}
}

// CallSecret is Call with key material attached: it travels after the
// JSON in the same datagram, is built in locked memory and zeroed once
// sent, and reaches the handler only through SecretFrom. The other end
// must list op in Options.SecretOps.
func (p *Peer) CallSecret(ctx context.Context, op string, args any, material []byte, result any) error {
	if len(material) == 0 || len(material) > MaxSecret {
		return fmt.Errorf("control: %s: %d bytes of key material, want 1 to %d", op, len(material), MaxSecret)
	}
	_, err := p.call(ctx, op, args, nil, material, result)
	return err
}

// RemoteError is an error the other end answered with.
type RemoteError struct{ Op, Msg string }

func (e *RemoteError) Error() string { return e.Op + ": " + e.Msg }

func (p *Peer) send(m message, fds []*os.File) error { return p.sendWith(m, fds, nil) }

// sendWith sends m, and material after it when there is any (see
// CallSecret): the datagram is then assembled in locked memory.
func (p *Peer) sendWith(m message, fds []*os.File, material []byte) error {
	if len(fds) > MaxFDs {
		return fmt.Errorf("%d descriptors, at most %d", len(fds), MaxFDs)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b)+1+len(material) > MaxMessage {
		return fmt.Errorf("a message of %d bytes, at most %d", len(b)+1+len(material), MaxMessage)
	}
	if len(material) > 0 {
		dg, err := secret.New(len(b) + 1 + len(material))
		if err != nil {
			return err
		}
		defer dg.Destroy()
		copy(dg.Bytes(), b)
		copy(dg.Bytes()[len(b)+1:], material)
		b = dg.Bytes()
	}
	var oob []byte
	if len(fds) > 0 {
		ints := make([]int, len(fds))
		for i, f := range fds {
			ints[i] = int(f.Fd())
		}
		oob = unix.UnixRights(ints...)
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	for {
		err := unix.Sendmsg(p.fd, b, oob, nil, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) && p.want != (Creds{}) {
			p.onReject(fmt.Sprintf("control %s: the service has not read for %s: connection closed", p.name, sendTimeout))
			p.Close()
		}
		return err
	}
}

// sendTimeout bounds a send at PID1's end (see Options.Want).
const sendTimeout = 5 * time.Second

func parseOOB(oob []byte) (fds []*os.File, creds *unix.Ucred, err error) {
	if len(oob) == 0 {
		return nil, nil, nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, nil, err
	}
	for i := range msgs {
		m := &msgs[i]
		switch {
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS:
			ints, err := syscall.ParseUnixRights(m)
			if err != nil {
				return fds, nil, err
			}
			for _, fd := range ints {
				fds = append(fds, os.NewFile(uintptr(fd), "control-fd"))
			}
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_CREDENTIALS:
			c, err := syscall.ParseUnixCredentials(m)
			if err != nil {
				return fds, nil, err
			}
			creds = &unix.Ucred{Pid: c.Pid, Uid: c.Uid, Gid: c.Gid}
		default:
			return fds, nil, fmt.Errorf("unexpected control message level %d type %d", m.Header.Level, m.Header.Type)
		}
	}
	if len(fds) > MaxFDs {
		return fds, nil, fmt.Errorf("%d descriptors, at most %d", len(fds), MaxFDs)
	}
	return fds, creds, nil
}

func credString(c *unix.Ucred) string {
	if c == nil {
		return "an unknown sender"
	}
	return fmt.Sprintf("pid %d uid %d", c.Pid, c.Uid)
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// Decode reads exactly one JSON value into v, refusing unknown fields and
// trailing data.
func Decode(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("malformed message: %w", err)
	}
	if d.More() {
		return errors.New("malformed message: data after the JSON value")
	}
	return nil
}
