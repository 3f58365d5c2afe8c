// Package keying is the IPsec keying's own process: it runs the mutually
// authenticated TLS connections with the service's other nodes
// (internal/ipsec) and derives each generation's ESP keys, but installs
// nothing itself. PID1 starts it (the init binary with the role "keying")
// as its own uid with no capability: PID1 binds the keying port with the
// ESP bypass and passes it in, makes each outgoing keying socket (setting
// the bypass needs CAP_NET_ADMIN), and installs, retires and removes the
// SAs on request (Kernel, below), checking each request against the peers
// and generations it knows. The process holds the node's TLS key (it
// terminates the keying TLS) and, for a moment, each generation's ESP
// keys; never a volume key or a backup secret.
package keying

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/bulwarkvm/bulwark/internal/control"
	"github.com/bulwarkvm/bulwark/internal/ipsec"
	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/internal/sandbox"
	"github.com/bulwarkvm/bulwark/services/service"
)

// Peer is one peer in Config, with the generations PID1 has installed
// with it (a restarted keying process goes on from them).
type Peer struct {
	Name        string             `json:"name"`
	Address     string             `json:"address"`
	Generations []ipsec.Generation `json:"generations,omitempty"`
}

// Config is the answer to OpConfig.
type Config struct {
	Self         string   `json:"self"`
	Port         int      `json:"port"`
	Peers        []Peer   `json:"peers"`
	CAPEM        []byte   `json:"ca_pem"`
	CertPEM      []byte   `json:"cert_pem"`
	KeyPEM       []byte   `json:"key_pem"`
	Revoked      []string `json:"revoked,omitempty"`
	RekeySeconds int      `json:"rekey_seconds,omitempty"`
	GraceSeconds int      `json:"grace_seconds,omitempty"`
	// Boot is this node's boot id for the keying protocol, the same for
	// every keying process of one boot.
	Boot string `json:"boot"`
}

// Operations on the control socket.
const (
	// The keying process asks PID1:
	OpConfig   = "keying.config"   // no arguments; Config
	OpSPI      = "keying.spi"      // SA{Peer}; SA{SPI}: an SPI reserved for an inbound SA
	OpInbound  = "keying.inbound"  // SA{Peer, InSPI, Gen, PeerBoot} and the key; nothing
	OpOutbound = "keying.outbound" // SA{Peer, InSPI, OutSPI} and the key; nothing
	OpDelete   = "keying.delete"   // SA{Peer, InSPI}; nothing
	OpStats    = "keying.stats"    // SA{Peer, InSPI}; ipsec.SAStats
	OpSocket   = "keying.socket"   // SA{Peer}; one descriptor: a TCP socket with the bypass, bound, not connected
	// PID1 asks the keying process:
	OpStatus = "keying.status" // no arguments; []ipsec.PeerStatus
	OpRekey  = "keying.rekey"  // no arguments; nothing
)

// SA is the argument of the SA operations (and the answer to OpSPI).
type SA struct {
	Peer     string `json:"peer,omitempty"`
	SPI      uint32 `json:"spi,omitempty"`
	InSPI    uint32 `json:"in_spi,omitempty"`
	OutSPI   uint32 `json:"out_spi,omitempty"`
	Gen      uint64 `json:"gen,omitempty"`
	PeerBoot string `json:"peer_boot,omitempty"`
}

// Syscalls are what the keying process calls beyond the Go runtime's:
// accepting and connecting the sockets PID1 gave, waiting for a connect,
// and locking the memory that holds a generation's keys.
var Syscalls = []string{"accept4", "connect", "ppoll", "mlock", "munlock"}

// Main runs the keying; ctl is the control socket, files the keying
// listener.
func Main(ctl *os.File, files []*os.File) int {
	var m *ipsec.Manager
	ready := make(chan struct{})
	handlers := map[string]control.Handler{
		OpStatus: func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
			select {
			case <-ready:
				return m.Status(), nil, nil
			default:
				return nil, nil, errors.New("starting")
			}
		},
		OpRekey: func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
			select {
			case <-ready:
				m.RekeyAll()
				return nil, nil, nil
			default:
				return nil, nil, errors.New("starting")
			}
		},
	}
	var cfg Config
	proc, err := service.Start(ctl, handlers, OpConfig, &cfg)
	if err != nil {
		return 1
	}
	log := proc.Log
	o, err := options(cfg)
	clear(cfg.KeyPEM)
	if err != nil {
		log.Error("configuration", "err", err)
		return 1
	}
	ln, err := service.Listener(files, "keying listener")
	if err != nil {
		log.Error(err.Error())
		return 1
	}
	// No file may be opened from here on: the process has its sockets,
	// its control socket and what PID1 gives it.
	rep, err := proc.Confine(sandbox.Policy{Syscalls: Syscalls})
	if err != nil {
		return 1
	}
	o.Kernel, o.Listener, o.Log = &kernel{peer: proc.Peer}, ln, log
	if m, err = ipsec.Start(o); err != nil {
		log.Error("keying", "err", err)
		return 1
	}
	close(ready)
	if proc.Ready(rep) != nil {
		return 1
	}
	proc.Wait()
	m.Close()
	return 0
}

// options turns PID1's Config into the manager's options; PID1 is
// trusted here, but a bad value still gets a clear error.
func options(c Config) (ipsec.Options, error) {
	var o ipsec.Options
	self, err := netip.ParseAddr(c.Self)
	if err != nil {
		return o, fmt.Errorf("self: %w", err)
	}
	ca, err := pki.ParseCertificate(c.CAPEM)
	if err != nil {
		return o, fmt.Errorf("project CA: %w", err)
	}
	cert, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
	if err != nil {
		return o, fmt.Errorf("node certificate: %w", err)
	}
	o = ipsec.Options{Self: self, KeyingPort: c.Port, CA: ca, Cert: cert, Revoked: c.Revoked,
		Rekey: time.Duration(c.RekeySeconds) * time.Second, Grace: time.Duration(c.GraceSeconds) * time.Second,
		Resume: map[netip.Addr][]ipsec.Generation{}, Boot: c.Boot}
	for _, p := range c.Peers {
		a, err := netip.ParseAddr(p.Address)
		if err != nil {
			return o, fmt.Errorf("peer %s: %w", p.Name, err)
		}
		o.Peers = append(o.Peers, ipsec.Peer{Name: p.Name, Addr: a})
		o.Resume[a] = p.Generations
	}
	return o, nil
}
