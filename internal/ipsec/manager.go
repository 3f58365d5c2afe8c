// Package ipsec secures the traffic between the nodes of a service with
// ESP: for each pair of peers, keys come from a mutually authenticated TLS
// 1.3 connection (the TLS exporter), SAs and policies are installed over
// netlink (XFRM), and the policies make the kernel drop plaintext between
// the two addresses in both directions. Rekeying is make-before-break. The
// protocol and its reasoning are in docs/ipsec-keying.md.
package ipsec

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/internal/safego"
	"github.com/bulwarkvm/bulwark/internal/secret"
)

// Defaults.
const (
	DefaultRekey = time.Hour
	DefaultGrace = 30 * time.Second
	// rekeyBytes and rekeyPackets trigger a rekey long before ESN or
	// AES-GCM limits (2^32 packets per key is the usual GCM bound).
	rekeyBytes   = 1 << 40
	rekeyPackets = 1 << 31
	// maxOld older generations at most stay for their grace period; with
	// the current one and one being made that is within maxGenerations.
	maxOld = 3
)

// Options configure the manager.
type Options struct {
	Self       netip.Addr
	Peers      []Peer
	KeyingPort int
	CA         *x509.Certificate
	Cert       tls.Certificate
	Revoked    []string
	Rekey      time.Duration
	Grace      time.Duration
	Log        *slog.Logger
	// Kernel installs the SAs; nil: an XFRM of the manager's own, which
	// installs the policies at Start and removes the SAs at Close.
	Kernel Kernel
	// Listener is the keying listener, with the bypass (Listen); nil:
	// Start makes it.
	Listener net.Listener
	// Resume are the generations already installed with each peer (a
	// keying process restarted): keying goes on from them.
	Resume map[netip.Addr][]Generation
	// Boot is this node's boot id in the keying protocol; empty: one is
	// drawn. PID1 gives the keying process the same one at each start,
	// so that a restart of the process is not a reboot to the peers
	// (which retire a rebooted peer's generations at once).
	Boot string
}

// Peer is another node: the name its certificate must carry and its
// address.
type Peer struct {
	Name string
	Addr netip.Addr
}

type peerState struct {
	Peer
	mu       sync.Mutex
	cur      *Generation
	old      []*Generation
	state    string
	lastErr  string
	rekeys   int
	lastBoot string
	kick     chan struct{} // a forced rekey
	want     chan want     // a request from the peer
	// force: a new generation is due now (a generation the previous
	// keying process left half-installed was deleted).
	force bool
}

// want is a peer's request for a new generation: its boot id, and
// whether it needs one even though its boot has SAs with us.
type want struct {
	boot  string
	force bool
}

// Manager runs the keying for all peers.
type Manager struct {
	connMu      sync.Mutex
	conns       map[netip.Addr]int
	connTotal   int
	lastRefusal atomic.Value // time.Time
	o           Options
	boot        string
	peers       []*peerState
	ln          net.Listener
	k           Kernel
	xfrm        *XFRM // the manager's own, when Options.Kernel was nil
	done        chan struct{}
	wg          sync.WaitGroup
	tls         *tls.Config
}

// Start installs the policies (from this moment plaintext to and from the
// peers is dropped), listens on the keying port and starts keying.
func Start(o Options) (*Manager, error) {
	if o.Rekey == 0 {
		o.Rekey = DefaultRekey
	}
	if o.Grace == 0 {
		o.Grace = DefaultGrace
	}
	boot := o.Boot
	if boot == "" {
		b := make([]byte, 8)
		rand.Read(b)
		boot = hex.EncodeToString(b)
	}
	m := &Manager{o: o, boot: boot, done: make(chan struct{})}
	m.lastRefusal.Store(time.Time{})
	pool := x509.NewCertPool()
	pool.AddCert(o.CA)
	m.tls = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{o.Cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	m.k = o.Kernel
	if m.k == nil {
		var addrs []netip.Addr
		for _, p := range o.Peers {
			addrs = append(addrs, p.Addr)
		}
		x, err := NewXFRM(o.Self, o.KeyingPort, addrs)
		if err != nil {
			return nil, err
		}
		m.k, m.xfrm = x, x
	}
	for _, p := range o.Peers {
		ps := &peerState{Peer: p, state: "connecting", kick: make(chan struct{}, 1), want: make(chan want, 1)}
		m.resume(ps, o.Resume[p.Addr])
		m.peers = append(m.peers, ps)
	}
	// The listener carries the keying connection's plaintext bypass; the
	// connections it accepts inherit it.
	m.ln = o.Listener
	if m.ln == nil {
		ln, err := Listen(o.Self, o.KeyingPort)
		if err != nil {
			if m.xfrm != nil {
				m.xfrm.RemovePolicies()
			}
			return nil, err
		}
		m.ln = ln
	}
	m.startLoops()
	return m, nil
}

// resume takes over the generations a previous keying process left with
// the peer: the current one, and those still in their grace period. One
// whose outbound SA never came is deleted, and a new generation is due at
// once: the peer may already send under it.
func (m *Manager) resume(p *peerState, gens []Generation) {
	for _, g := range gens {
		switch {
		case g.OutSPI == 0:
			m.k.Delete(p.Addr, g.InSPI)
			p.force = true
		case g.Current:
			g := g
			p.cur = &g
			p.state = "up"
			p.lastBoot = g.PeerBoot
		default:
			g := g
			p.old = append(p.old, &g)
		}
	}
}

// Test hooks, nil outside tests: each runs at the start of its goroutine
// (testHookAccept and testHookRun at the start of their loops).
var testHookAccept, testHookServe, testHookRun func()

// startLoops starts the accept loop and a keying loop per peer. The
// manager runs in PID1, where a panic would bring the node down: a panic
// in a loop is reported and the loop runs again (after 1 s, doubling to
// 30 s while it keeps panicking), with the peer's state as the panic left
// it; a panic while one keying connection is served closes that
// connection (docs/boot.md).
func (m *Manager) startLoops() {
	m.loop("ipsec accept", m.accept)
	for _, p := range m.peers {
		m.loop("ipsec keying with "+p.Name, func() { m.run(p) })
	}
}

// loop runs fn in a goroutine that the wait group counts once, however
// often a panic makes fn run again; it ends when fn returns or the
// manager closes.
func (m *Manager) loop(name string, fn func()) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		safego.Restart(name, m.done, func() error { fn(); return nil })
	}()
}

// Close stops keying. With an XFRM of its own it deletes the SAs, which
// hold the keys, but leaves the policies that require ESP in place (they
// hold no secret): until the machine powers off, nothing between this
// node and a peer leaves in plaintext, not even from a process that
// outlived the teardown. Installing the policies again (a new Start)
// replaces them. With Options.Kernel, the SAs are its owner's to remove.
func (m *Manager) Close() error {
	m.stopLoops()
	if m.xfrm != nil {
		m.xfrm.RemoveSAs()
	}
	return nil
}

// stopLoops ends the accept loop and the peers' keying loops.
func (m *Manager) stopLoops() {
	close(m.done)
	m.ln.Close()
	m.wg.Wait()
}

// initiates: the peer with the lower address initiates each generation;
// the other asks it to (a "request") when it has no SA.
func (m *Manager) initiates(p *peerState) bool { return m.o.Self.Less(p.Addr) }

// RekeyAll forces a new generation with every peer.
func (m *Manager) RekeyAll() {
	for _, p := range m.peers {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// run keeps one peer keyed: it initiates generations (or requests them),
// rekeys on time and volume, retries with backoff and retires old
// generations after the grace period.
func (m *Manager) run(p *peerState) {
	if testHookRun != nil {
		testHookRun()
	}
	backoff := time.Second
	for {
		p.mu.Lock()
		cur, force := p.cur, p.force
		p.mu.Unlock()
		due := cur == nil || force || time.Since(cur.Installed) >= m.o.Rekey || m.overVolume(p, cur)
		wait := 5 * time.Second
		if due {
			var err error
			if m.initiates(p) {
				err = m.initiate(p)
			} else if cur == nil || force {
				err = m.request(p, force)
			}
			if err == nil && force {
				p.mu.Lock()
				p.force = false
				p.mu.Unlock()
			}
			if err != nil {
				p.mu.Lock()
				p.lastErr = err.Error()
				if p.cur == nil {
					p.state = "down: " + err.Error()
				}
				p.mu.Unlock()
				m.o.Log.Warn("ipsec: keying failed", "peer", p.Name, "err", err, "retry in", backoff)
				wait = backoff
				backoff = min(2*backoff, 30*time.Second)
			} else {
				backoff = time.Second
			}
		}
		m.retire(p)
		select {
		case <-m.done:
			return
		case <-p.kick:
			if m.initiates(p) {
				if err := m.initiate(p); err != nil {
					m.o.Log.Warn("ipsec: forced rekey failed", "peer", p.Name, "err", err)
				}
			} else {
				m.request(p, false)
			}
		case w := <-p.want:
			// Only if the peer's current boot has no SAs with us yet
			// (a request can cross a generation already under way), or
			// the peer says it lost its half of the current one.
			p.mu.Lock()
			current := p.cur != nil && p.cur.PeerBoot == w.boot
			p.mu.Unlock()
			if (!current || w.force) && m.initiates(p) {
				if err := m.initiate(p); err != nil {
					m.o.Log.Warn("ipsec: keying on request failed", "peer", p.Name, "err", err)
				}
			}
		case <-time.After(wait):
		}
	}
}

func (m *Manager) overVolume(p *peerState, g *Generation) bool {
	if g == nil {
		return false
	}
	s, err := m.k.Stats(p.Addr, g.InSPI)
	return err == nil && (s.BytesOut > rekeyBytes || s.PacketsOut > rekeyPackets)
}

// retire deletes generations older than the current one once the grace
// period has passed (immediately when the peer has rebooted, or when more
// than maxOld are waiting).
func (m *Manager) retire(p *peerState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	keep := p.old[:0]
	for i, g := range p.old {
		// Beyond maxOld older generations (rekeys faster than the grace
		// period) the oldest go at once: only the last ones can still
		// have packets in flight, and PID1 holds at most maxGenerations.
		tooMany := len(p.old)-i > maxOld
		if tooMany || p.cur != nil && (g.PeerBoot != p.cur.PeerBoot || time.Since(p.cur.Installed) >= m.o.Grace) {
			if err := m.k.Delete(p.Addr, g.InSPI); err != nil {
				m.o.Log.Warn("ipsec: retiring a generation", "peer", p.Name, "gen", g.Gen, "err", err)
			}
			continue
		}
		keep = append(keep, g)
	}
	p.old = keep
}

func (m *Manager) dial(p *peerState) (*tls.Conn, error) {
	cfg := m.tls.Clone()
	cfg.ServerName = p.Name
	cfg.VerifyConnection = m.verifyPeer(p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := m.k.Dial(ctx, p.Addr, m.o.KeyingPort)
	if err != nil {
		return nil, fmt.Errorf("keying connection to %s: %w", p.Addr, err)
	}
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("keying connection to %s: %w", p.Addr, err)
	}
	return c, nil
}

// verifyPeer checks that the other end is the expected peer: a node
// certificate of the project CA that names it, not revoked.
func (m *Manager) verifyPeer(p *peerState) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no certificate")
		}
		c := cs.PeerCertificates[0]
		if err := pki.Verify(m.o.CA, c, x509.ExtKeyUsageServerAuth, m.o.Revoked, time.Now()); err != nil {
			return err
		}
		if err := c.VerifyHostname(p.Name); err != nil {
			return fmt.Errorf("the certificate does not name peer %s: %w", p.Name, err)
		}
		return nil
	}
}

// request asks an initiating peer for a new generation; force asks for
// one even though this boot has SAs with it.
func (m *Manager) request(p *peerState, force bool) error {
	c, err := m.dial(p)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline(c)
	return newWire(c).send(message{Type: "request", Boot: m.boot, Force: force})
}

// initiate runs one generation as the initiator.
func (m *Manager) initiate(p *peerState) error {
	start := time.Now()
	c, err := m.dial(p)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline(c)
	w := newWire(c)
	p.mu.Lock()
	gen := uint64(1)
	if p.cur != nil {
		gen = p.cur.Gen + 1
	}
	p.mu.Unlock()
	inSPI, err := m.k.AllocSPI(p.Addr)
	if err != nil {
		return err
	}
	if err := w.send(message{Type: "hello", Boot: m.boot, Gen: gen, SPI: inSPI}); err != nil {
		return err
	}
	hello, err := w.recv("hello")
	if err != nil {
		return err
	}
	return m.install(p, w, c.ConnectionState(), m.o.Self, p.Addr, inSPI, hello.SPI, gen, hello.Boot, true, start)
}

// respond runs one generation as the responder.
func (m *Manager) respond(p *peerState, w *wire, cs tls.ConnectionState, hello message) error {
	start := time.Now()
	inSPI, err := m.k.AllocSPI(p.Addr)
	if err != nil {
		w.send(message{Type: "error", Err: err.Error()})
		return err
	}
	if err := w.send(message{Type: "hello", Boot: m.boot, Gen: hello.Gen, SPI: inSPI}); err != nil {
		return err
	}
	return m.install(p, w, cs, p.Addr, m.o.Self, hello.SPI, inSPI, hello.Gen, hello.Boot, false, start)
}

// install derives the keys and installs the generation: inbound SA first,
// then (once the peer has its inbound SA) the outbound SA and the switch of
// the outbound policy to it. The older generation stays for the grace
// period, so packets in flight under it are still accepted.
func (m *Manager) install(p *peerState, w *wire, cs tls.ConnectionState, initiator, responder netip.Addr, spiI, spiR uint32, gen uint64, peerBoot string, isInitiator bool, start time.Time) error {
	kIR, kRI, err := keys(cs, initiator, responder, spiI, spiR, gen)
	if err != nil {
		return err
	}
	// The key material goes to the kernel and is then zeroed; it lives in
	// locked memory meanwhile.
	buf, err := secret.New(2 * aeadKeyLen)
	if err != nil {
		return err
	}
	defer buf.Destroy()
	copy(buf.Bytes(), kIR)
	copy(buf.Bytes()[aeadKeyLen:], kRI)
	clear(kIR)
	clear(kRI)
	outKey, inKey := buf.Bytes()[:aeadKeyLen], buf.Bytes()[aeadKeyLen:]
	inSPI, outSPI := spiI, spiR
	if !isInitiator {
		outKey, inKey = inKey, outKey
		inSPI, outSPI = spiR, spiI
	}
	if err := m.k.AddInbound(p.Addr, Generation{Gen: gen, InSPI: inSPI, PeerBoot: peerBoot}, inKey); err != nil {
		return err
	}
	if err := w.send(message{Type: "ready"}); err != nil {
		m.k.Delete(p.Addr, inSPI)
		return err
	}
	if _, err := w.recv("ready"); err != nil {
		m.k.Delete(p.Addr, inSPI)
		return err
	}
	if err := m.k.AddOutbound(p.Addr, inSPI, outSPI, outKey); err != nil {
		m.k.Delete(p.Addr, inSPI)
		return err
	}
	p.mu.Lock()
	if p.cur != nil {
		p.old = append(p.old, p.cur)
	}
	rebooted := p.lastBoot != "" && p.lastBoot != peerBoot
	p.cur = &Generation{Gen: gen, InSPI: inSPI, OutSPI: outSPI, Installed: time.Now(), PeerBoot: peerBoot, Current: true}
	p.lastBoot = peerBoot
	p.state, p.lastErr = "up", ""
	p.rekeys++
	p.mu.Unlock()
	m.o.Log.Info("ipsec: SAs installed", "peer", p.Name, "gen", gen, "in_spi", fmt.Sprintf("%#x", inSPI), "out_spi", fmt.Sprintf("%#x", outSPI),
		"took", time.Since(start).Round(time.Millisecond), "peer_rebooted", rebooted)
	m.retire(p)
	return nil
}

// accept serves keying connections from peers.
func (m *Manager) accept() {
	if testHookAccept != nil {
		testHookAccept()
	}
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		// A bounded number of keying connections at once, in all and
		// per source: a host spoofing a peer's address reaches this port
		// in plaintext (the firewall admits peers), and must not be able
		// to hold PID1's descriptors. A refused connection is closed
		// unread and logged at most once a second.
		from := remoteAddr(c)
		if !m.admit(from) {
			c.Close()
			if time.Since(m.lastRefusal.Load().(time.Time)) > time.Second {
				m.lastRefusal.Store(time.Now())
				m.o.Log.Warn("ipsec: keying connections over the limit are closed", "from", from)
			}
			continue
		}
		// serve closes the connection however it ends.
		safego.Go("ipsec keying connection", func() {
			defer m.release(from)
			m.serve(c)
		})
	}
}

// Limits of concurrent keying connections: a peer needs one at a time
// (two when both ends start a generation at once).
const (
	maxKeyingConns        = 64
	maxKeyingConnsPerPeer = 4
)

func (m *Manager) admit(from netip.Addr) bool {
	m.connMu.Lock()
	defer m.connMu.Unlock()
	if m.conns == nil {
		m.conns = map[netip.Addr]int{}
	}
	if m.connTotal >= maxKeyingConns || m.conns[from] >= maxKeyingConnsPerPeer {
		return false
	}
	m.conns[from]++
	m.connTotal++
	return true
}

func (m *Manager) release(from netip.Addr) {
	m.connMu.Lock()
	defer m.connMu.Unlock()
	m.connTotal--
	if m.conns[from]--; m.conns[from] <= 0 {
		delete(m.conns, from)
	}
}

func (m *Manager) serve(raw net.Conn) {
	defer raw.Close()
	if testHookServe != nil {
		testHookServe()
	}
	from := remoteAddr(raw)
	i := slices.IndexFunc(m.peers, func(p *peerState) bool { return p.Addr == from })
	if i < 0 {
		m.o.Log.Warn("ipsec: keying connection from a non-peer", "from", from)
		return
	}
	p := m.peers[i]
	cfg := m.tls.Clone()
	cfg.VerifyConnection = m.verifyPeer(p)
	c := tls.Server(raw, cfg)
	deadline(c)
	if err := c.Handshake(); err != nil {
		m.o.Log.Warn("ipsec: keying handshake refused", "peer", p.Name, "from", from, "err", err)
		return
	}
	w := newWire(c)
	msg, err := w.recv("")
	if err != nil {
		return
	}
	switch msg.Type {
	case "request":
		if m.initiates(p) {
			select {
			case p.want <- want{boot: msg.Boot, force: msg.Force}:
			default:
			}
		}
	case "hello":
		if m.initiates(p) {
			w.send(message{Type: "error", Err: "the lower address initiates"})
			return
		}
		if err := m.respond(p, w, c.ConnectionState(), msg); err != nil {
			m.o.Log.Warn("ipsec: keying as responder failed", "peer", p.Name, "err", err)
		}
	}
}

// PeerStatus is one peer's line in status.
type PeerStatus struct {
	Name       string `json:"name"`
	Address    string `json:"address"`
	State      string `json:"state"`
	Generation uint64 `json:"generation"`
	SAAge      string `json:"sa_age"`
	Rekeys     int    `json:"rekeys"`
	// Generations is how many key generations have SAs in the kernel:
	// the current one, plus older ones during their grace period.
	Generations int    `json:"generations_installed"`
	BytesOut    uint64 `json:"bytes_out"`
	PacketsOut  uint64 `json:"packets_out"`
	BytesIn     uint64 `json:"bytes_in"`
	PacketsIn   uint64 `json:"packets_in"`
	LastError   string `json:"last_error,omitempty"`
}

// Status reports every peer.
func (m *Manager) Status() []PeerStatus {
	var out []PeerStatus
	for _, p := range m.peers {
		p.mu.Lock()
		s := PeerStatus{Name: p.Name, Address: p.Addr.String(), State: p.state, Rekeys: p.rekeys, LastError: p.lastErr, Generations: len(p.old)}
		if p.cur != nil {
			s.Generations++
		}
		g := p.cur
		if g != nil {
			s.Generation = g.Gen
			s.SAAge = time.Since(g.Installed).Round(time.Second).String()
		}
		p.mu.Unlock()
		// The counters come from the kernel (through PID1 for the
		// keying process), outside the peer's lock.
		if g != nil {
			if st, err := m.k.Stats(p.Addr, g.InSPI); err == nil {
				s.BytesOut, s.PacketsOut, s.BytesIn, s.PacketsIn = st.BytesOut, st.PacketsOut, st.BytesIn, st.PacketsIn
			}
		}
		out = append(out, s)
	}
	return out
}
