package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/bulwarkvm/bulwark/internal/ipsec"
)

// startIPsec installs the ESP-only policies for every peer (from then on
// the kernel drops plaintext between this node and its peers, both ways)
// and starts keying with them over mutual TLS. SAs come up in the
// background: a peer that is down does not hold the node back, and status
// reports each peer.
func startIPsec(b *boot) (string, error) {
	s := b.cfg.IPsec
	if s == nil {
		return "not configured", nil
	}
	waited, err := b.awaitModules()
	if err != nil {
		return "", err
	}
	t := b.cfg.TLS
	cert, ca := b.nodeCert, b.projectCA
	o := ipsec.Options{
		Self:       netip.MustParseAddr(s.Address),
		KeyingPort: b.cfg.Firewall.EffectiveKeyingPort(),
		CA:         ca,
		Cert:       cert,
		Revoked:    t.RevokedSerials,
		Rekey:      time.Duration(s.RekeySeconds) * time.Second,
		Grace:      time.Duration(s.GraceSeconds) * time.Second,
		Log:        b.log,
	}
	for _, p := range s.Peers {
		o.Peers = append(o.Peers, ipsec.Peer{Name: p.Name, Addr: netip.MustParseAddr(p.Address)})
	}
	m, err := ipsec.Start(o)
	if err != nil {
		return "", err
	}
	b.ipsec = m
	// Essential: the SAs hold the ESP keys in the kernel. The policies
	// requiring ESP stay until power-off.
	b.onShutdownWithin("remove IPsec SAs", 5*time.Second, true, func(context.Context) error { return m.Close() })
	return fmt.Sprintf("%d peers, ESP required, keying on tcp %d from %s%s", len(o.Peers), o.KeyingPort, o.Self, waitedNote(waited)), nil
}
