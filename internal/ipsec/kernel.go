package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Kernel is what keying needs of the node's XFRM state. The keying
// process has no capability: its Kernel is a set of requests to PID1
// (services/keying), whose XFRM value checks each one and acts. Tests and
// a manager started without one use an XFRM directly.
type Kernel interface {
	// AllocSPI reserves an SPI for a new inbound SA from peer.
	AllocSPI(peer netip.Addr) (uint32, error)
	// AddInbound installs the inbound SA of a new generation, under an
	// SPI AllocSPI gave. key is read, not kept.
	AddInbound(peer netip.Addr, g Generation, key []byte) error
	// AddOutbound installs the generation's outbound SA (the SPI the
	// peer chose) and points the outbound policy at it.
	AddOutbound(peer netip.Addr, inSPI, outSPI uint32, key []byte) error
	// Delete removes the SAs of the generation whose inbound SPI is
	// inSPI.
	Delete(peer netip.Addr, inSPI uint32) error
	// Stats are the counters of the generation's SAs.
	Stats(peer netip.Addr, inSPI uint32) (SAStats, error)
	// Dial opens a keying connection to peer's port: the one kind of
	// socket whose packets bypass ESP.
	Dial(ctx context.Context, peer netip.Addr, port int) (net.Conn, error)
}

// Generation is one key generation with a peer as the kernel holds it.
type Generation struct {
	Gen       uint64    `json:"gen"`
	InSPI     uint32    `json:"in_spi"`
	OutSPI    uint32    `json:"out_spi,omitempty"` // 0 until the outbound SA is in
	Installed time.Time `json:"installed"`
	PeerBoot  string    `json:"peer_boot"`
	Current   bool      `json:"current,omitempty"` // the outbound policy uses it
}

// SAStats are a generation's byte and packet counters.
type SAStats struct {
	BytesOut   uint64 `json:"bytes_out"`
	PacketsOut uint64 `json:"packets_out"`
	BytesIn    uint64 `json:"bytes_in"`
	PacketsIn  uint64 `json:"packets_in"`
}

// Limits on what a keying process may hold in the kernel per peer: SPIs
// reserved and not yet used, and generations installed (the current one
// and those in their grace period). A compromised keying process can
// still break its peers' traffic, but not fill the kernel's tables.
const (
	maxPendingSPIs = 8
	maxGenerations = 8
	maxPeerBoot    = 64
)

// XFRM is the node's XFRM state for its peers, as PID1 keeps it: the
// policies that require ESP, and every SA installed through it, checked
// against the peers and the generations it knows.
type XFRM struct {
	self  netip.Addr
	port  int // the keying port: the keying sockets' bypass covers it alone
	mu    sync.Mutex
	peers map[netip.Addr]*xfrmPeer
	order []netip.Addr
}

type xfrmPeer struct {
	reqid   int
	pending []uint32 // SPIs reserved, oldest first
	gens    []Generation
}

// NewXFRM installs, for each peer, the policies that require ESP both
// ways: from then on the kernel drops plaintext between this node and
// its peers. Only the keying sockets (Listen, Dial, Socket) bypass them,
// for the keying connection on port alone.
func NewXFRM(self netip.Addr, port int, peers []netip.Addr) (*XFRM, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("ipsec: keying port %d", port)
	}
	x := &XFRM{self: self, port: port, peers: map[netip.Addr]*xfrmPeer{}}
	for i, p := range peers {
		if _, dup := x.peers[p]; dup || p == self || p.Is4() != self.Is4() {
			x.RemovePolicies()
			return nil, fmt.Errorf("ipsec: peer %s: a duplicate, this node, or another address family", p)
		}
		xp := &xfrmPeer{reqid: 1000 + i}
		x.peers[p] = xp
		x.order = append(x.order, p)
		if err := installPolicies(policies(self, p, 0, xp.reqid)); err != nil {
			x.RemovePolicies()
			return nil, err
		}
	}
	return x, nil
}

func (x *XFRM) peer(a netip.Addr) (*xfrmPeer, error) {
	p := x.peers[a]
	if p == nil {
		return nil, fmt.Errorf("ipsec: %s is not a peer of this node", a)
	}
	return p, nil
}

// AllocSPI implements Kernel.
func (x *XFRM) AllocSPI(peer netip.Addr) (uint32, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	p, err := x.peer(peer)
	if err != nil {
		return 0, err
	}
	spi, err := allocSPI(peer, x.self, p.reqid)
	if err != nil {
		return 0, err
	}
	// Each reservation is a larval state in the kernel, which expires by
	// itself; past the limit the oldest is deleted at once, so that a
	// keying process asking again and again holds at most
	// maxPendingSPIs of them per peer.
	p.pending = append(p.pending, spi)
	if len(p.pending) > maxPendingSPIs {
		deleteState(peer, x.self, p.pending[0])
		p.pending = p.pending[1:]
	}
	return spi, nil
}

// AddInbound implements Kernel.
func (x *XFRM) AddInbound(peer netip.Addr, g Generation, key []byte) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	p, err := x.peer(peer)
	if err != nil {
		return err
	}
	i := -1
	for j, s := range p.pending {
		if s == g.InSPI {
			i = j
		}
	}
	switch {
	case i < 0:
		return fmt.Errorf("ipsec: SPI %#x was not reserved for %s", g.InSPI, peer)
	case len(key) != aeadKeyLen:
		return fmt.Errorf("ipsec: a key of %d bytes, want %d", len(key), aeadKeyLen)
	case len(g.PeerBoot) > maxPeerBoot || g.Gen == 0:
		return fmt.Errorf("ipsec: generation %d, peer boot id of %d bytes: refused", g.Gen, len(g.PeerBoot))
	case len(p.gens) >= maxGenerations:
		return fmt.Errorf("ipsec: %d generations with %s installed already", len(p.gens), peer)
	}
	if err := installState(peer, x.self, g.InSPI, key, p.reqid); err != nil {
		return err
	}
	p.pending = append(p.pending[:i], p.pending[i+1:]...)
	p.gens = append(p.gens, Generation{Gen: g.Gen, InSPI: g.InSPI, Installed: time.Now(), PeerBoot: g.PeerBoot})
	return nil
}

// AddOutbound implements Kernel.
func (x *XFRM) AddOutbound(peer netip.Addr, inSPI, outSPI uint32, key []byte) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	p, err := x.peer(peer)
	if err != nil {
		return err
	}
	g := p.find(inSPI)
	switch {
	case g == nil:
		return fmt.Errorf("ipsec: no generation with inbound SPI %#x for %s", inSPI, peer)
	case g.OutSPI != 0:
		return fmt.Errorf("ipsec: the generation with inbound SPI %#x has its outbound SA", inSPI)
	case outSPI < 256: // 1-255 are reserved (RFC 4303 section 2.1)
		return fmt.Errorf("ipsec: outbound SPI %#x is reserved", outSPI)
	case len(key) != aeadKeyLen:
		return fmt.Errorf("ipsec: a key of %d bytes, want %d", len(key), aeadKeyLen)
	}
	for _, o := range p.gens {
		if o.OutSPI == outSPI {
			return fmt.Errorf("ipsec: outbound SPI %#x is in use", outSPI)
		}
	}
	if err := installState(x.self, peer, outSPI, key, p.reqid); err != nil {
		return err
	}
	if err := installPolicies(policies(x.self, peer, outSPI, p.reqid)); err != nil {
		deleteState(x.self, peer, outSPI)
		return err
	}
	g.OutSPI, g.Installed = outSPI, time.Now()
	for i := range p.gens {
		p.gens[i].Current = p.gens[i].InSPI == inSPI
	}
	return nil
}

func (p *xfrmPeer) find(inSPI uint32) *Generation {
	for i := range p.gens {
		if p.gens[i].InSPI == inSPI {
			return &p.gens[i]
		}
	}
	return nil
}

// Delete implements Kernel. Deleting the current generation is allowed
// (the policies then drop the traffic until the next one): it fails
// closed.
func (x *XFRM) Delete(peer netip.Addr, inSPI uint32) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	p, err := x.peer(peer)
	if err != nil {
		return err
	}
	g := p.find(inSPI)
	if g == nil {
		return fmt.Errorf("ipsec: no generation with inbound SPI %#x for %s", inSPI, peer)
	}
	x.deleteGen(peer, *g)
	p.gens = removeGen(p.gens, inSPI)
	return nil
}

func removeGen(gs []Generation, inSPI uint32) []Generation {
	out := gs[:0]
	for _, g := range gs {
		if g.InSPI != inSPI {
			out = append(out, g)
		}
	}
	return out
}

func (x *XFRM) deleteGen(peer netip.Addr, g Generation) {
	deleteState(peer, x.self, g.InSPI)
	if g.OutSPI != 0 {
		deleteState(x.self, peer, g.OutSPI)
	}
}

// Stats implements Kernel.
func (x *XFRM) Stats(peer netip.Addr, inSPI uint32) (SAStats, error) {
	x.mu.Lock()
	p, err := x.peer(peer)
	var g *Generation
	if err == nil {
		g = p.find(inSPI)
	}
	var gen Generation
	if g != nil {
		gen = *g
	}
	x.mu.Unlock()
	if err != nil {
		return SAStats{}, err
	}
	if g == nil {
		return SAStats{}, fmt.Errorf("ipsec: no generation with inbound SPI %#x for %s", inSPI, peer)
	}
	var s SAStats
	s.BytesIn, s.PacketsIn, err = stateStats(peer, x.self, gen.InSPI)
	if err == nil && gen.OutSPI != 0 {
		s.BytesOut, s.PacketsOut, err = stateStats(x.self, peer, gen.OutSPI)
	}
	return s, err
}

// Generations are the generations installed with peer, for a keying
// process that restarts and must go on from the kernel's state.
func (x *XFRM) Generations(peer netip.Addr) []Generation {
	x.mu.Lock()
	defer x.mu.Unlock()
	if p := x.peers[peer]; p != nil {
		return append([]Generation(nil), p.gens...)
	}
	return nil
}

// RemoveSAs deletes every SA installed through x, and with them the ESP
// keys. The policies stay (they hold no secret): until the machine powers
// off nothing between this node and a peer leaves in plaintext.
func (x *XFRM) RemoveSAs() {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, a := range x.order {
		p := x.peers[a]
		for _, g := range p.gens {
			x.deleteGen(a, g)
		}
		p.gens, p.pending = nil, nil
	}
}

// RemovePolicies deletes the SAs and the policies: for a start that
// failed, and for tests.
func (x *XFRM) RemovePolicies() {
	x.RemoveSAs()
	for _, a := range x.order {
		removePolicies(policies(x.self, a, 0, x.peers[a].reqid))
	}
}

// Dial implements Kernel: a socket with the bypass, bound to this node's
// address.
func (x *XFRM) Dial(ctx context.Context, peer netip.Addr, port int) (net.Conn, error) {
	if _, err := x.peer(peer); err != nil {
		return nil, err
	}
	if port != x.port {
		return nil, fmt.Errorf("ipsec: port %d is not the keying port", port)
	}
	d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: x.self.AsSlice()}, Control: bypassDial(peer, x.port)}
	return d.DialContext(ctx, "tcp", net.JoinHostPort(peer.String(), fmt.Sprint(port)))
}

// Socket is a TCP socket with the bypass, bound to this node's address
// and not yet connected, for a keying process to connect to peer: it
// cannot set the bypass itself (that needs CAP_NET_ADMIN).
func (x *XFRM) Socket(peer netip.Addr) (*os.File, error) {
	if _, err := x.peer(peer); err != nil {
		return nil, err
	}
	family, network := unix.AF_INET, "tcp4"
	var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: x.self.As4()}
	if x.self.Is6() {
		family, network = unix.AF_INET6, "tcp6"
		sa = &unix.SockaddrInet6{Addr: x.self.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("ipsec: keying socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "keying")
	rc, err := f.SyscallConn()
	if err == nil {
		err = setBypass(network, rc, peer, x.port)
	}
	if err == nil {
		// The port is chosen at connect, not reserved at bind: sockets
		// the keying process asks for and never connects hold none.
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}
	if err == nil {
		err = unix.Bind(fd, sa)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ipsec: keying socket: %w", err)
	}
	return f, nil
}

// Listen makes the keying listener, with the bypass: the connections it
// accepts inherit it.
func Listen(self netip.Addr, port int) (*net.TCPListener, error) {
	lc := net.ListenConfig{Control: bypassListen(port)}
	ln, err := lc.Listen(context.Background(), "tcp", net.JoinHostPort(self.String(), fmt.Sprint(port)))
	if err != nil {
		return nil, fmt.Errorf("ipsec: keying port: %w", err)
	}
	return ln.(*net.TCPListener), nil
}

// ConnectSocket connects a socket from XFRM.Socket (in the keying
// process) to peer's port and makes it a net.Conn.
func ConnectSocket(ctx context.Context, f *os.File, peer netip.Addr, port int) (net.Conn, error) {
	defer f.Close()
	var sa unix.Sockaddr
	if peer.Is4() {
		sa = &unix.SockaddrInet4{Addr: peer.As4(), Port: port}
	} else {
		sa = &unix.SockaddrInet6{Addr: peer.As16(), Port: port}
	}
	// A non-blocking connect, waited for with ppoll: a blocking one with
	// a send timeout returns EINTR on the Go runtime's signals.
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	fd := int(f.Fd())
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, err
	}
	err := unix.Connect(fd, sa)
	for errors.Is(err, unix.EINPROGRESS) || errors.Is(err, unix.EINTR) {
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, fmt.Errorf("keying connection to %s: %w", peer, os.ErrDeadlineExceeded)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, perr := unix.Poll(pfd, int(wait.Milliseconds())+1)
		if errors.Is(perr, unix.EINTR) || (perr == nil && n == 0) {
			continue
		}
		if perr != nil {
			return nil, perr
		}
		soerr, gerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if gerr != nil {
			return nil, gerr
		}
		err = nil
		if soerr != 0 {
			err = unix.Errno(soerr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("keying connection to %s: %w", peer, err)
	}
	return net.FileConn(f)
}
