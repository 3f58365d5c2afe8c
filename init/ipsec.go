package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/bulwarkvm/bulwark/internal/control"
	"github.com/bulwarkvm/bulwark/internal/ipsec"
	ksvc "github.com/bulwarkvm/bulwark/services/keying"
)

// The keying process: uid and gid of its own, no capabilities.
const keyingUID = 61003

// startIPsec installs the ESP-only policies for every peer (from then on
// the kernel drops plaintext between this node and its peers, both ways)
// and starts the keying process, which keys with the peers over mutual
// TLS. PID1 keeps the XFRM state: the keying process asks for each SA
// and PID1 checks the request (ipsec.XFRM). SAs come up in the
// background: a peer that is down does not hold the node back, and
// status reports each peer.
func startIPsec(b *boot) (string, error) {
	s := b.cfg.IPsec
	if s == nil {
		return "not configured", nil
	}
	waited, err := b.awaitModules()
	if err != nil {
		return "", err
	}
	self := netip.MustParseAddr(s.Address)
	var addrs []netip.Addr
	for _, p := range s.Peers {
		addrs = append(addrs, netip.MustParseAddr(p.Address))
	}
	port := b.cfg.Firewall.EffectiveKeyingPort()
	x, err := ipsec.NewXFRM(self, port, addrs)
	if err != nil {
		return "", err
	}
	// Essential: the SAs hold the ESP keys in the kernel. The policies
	// requiring ESP stay until power-off. (Teardown steps run last
	// registered first: the keying process stops before this.)
	b.onShutdownWithin("remove IPsec SAs", 5*time.Second, true, func(context.Context) error { x.RemoveSAs(); return nil })
	svc := &service{
		name: "keying", uid: keyingUID, gid: keyingUID, secretOps: []string{ksvc.OpInbound, ksvc.OpOutbound},
		handlers: b.keyingHandlers(x, self, port),
		files: func() ([]*os.File, error) {
			ln, err := ipsec.Listen(self, port)
			if err != nil {
				return nil, err
			}
			defer ln.Close()
			f, err := ln.File()
			if err != nil {
				return nil, err
			}
			return []*os.File{f}, nil
		},
	}
	if err := b.supervise(svc, 30*time.Second); err != nil {
		return "", fmt.Errorf("ipsec: %w", err)
	}
	b.keying = svc
	b.services = append(b.services, svc)
	b.onShutdownWithin("stop service keying", 5*time.Second, false, svc.stopService)
	b.notes = append(b.notes, svc.status().summary())
	return fmt.Sprintf("%d peers, ESP required, keying on tcp %d from %s (process %d, uid %d)%s",
		len(addrs), port, self, svc.status().Pid, keyingUID, waitedNote(waited)), nil
}

// keyingHandlers are the operations the keying process may ask PID1 for.
// Every argument is untrusted: the peer must be configured, and the XFRM
// checks SPIs, keys and generations against what it installed.
func (b *boot) keyingHandlers(x *ipsec.XFRM, self netip.Addr, port int) map[string]control.Handler {
	s := b.cfg.IPsec
	// One boot id per boot: a restarted keying process is not a reboot
	// to the peers.
	id := make([]byte, 8)
	rand.Read(id)
	bootID := hex.EncodeToString(id)
	// onSA decodes an SA request and its peer's address, then runs fn.
	onSA := func(fn func(ctx context.Context, a ksvc.SA, peer netip.Addr) (any, []*os.File, error)) control.Handler {
		return func(ctx context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a ksvc.SA
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			peer, err := netip.ParseAddr(a.Peer)
			if err != nil {
				return nil, nil, fmt.Errorf("peer: %w", err)
			}
			return fn(ctx, a, peer)
		}
	}
	key := func(ctx context.Context) ([]byte, error) {
		sec := control.SecretFrom(ctx)
		if sec == nil {
			return nil, errors.New("no key material")
		}
		return sec.Bytes(), nil
	}
	return map[string]control.Handler{
		ksvc.OpConfig: func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
			t := b.cfg.TLS
			c := ksvc.Config{Self: self.String(), Port: port, CAPEM: []byte(t.CA), CertPEM: []byte(t.Certificate),
				KeyPEM: []byte(t.Key), Revoked: t.RevokedSerials, RekeySeconds: s.RekeySeconds, GraceSeconds: s.GraceSeconds, Boot: bootID}
			for _, p := range s.Peers {
				c.Peers = append(c.Peers, ksvc.Peer{Name: p.Name, Address: p.Address, Generations: x.Generations(netip.MustParseAddr(p.Address))})
			}
			return c, nil, nil
		},
		ksvc.OpSPI: onSA(func(_ context.Context, _ ksvc.SA, peer netip.Addr) (any, []*os.File, error) {
			spi, err := x.AllocSPI(peer)
			return ksvc.SA{SPI: spi}, nil, err
		}),
		ksvc.OpInbound: onSA(func(ctx context.Context, a ksvc.SA, peer netip.Addr) (any, []*os.File, error) {
			k, err := key(ctx)
			if err != nil {
				return nil, nil, err
			}
			return nil, nil, x.AddInbound(peer, ipsec.Generation{Gen: a.Gen, InSPI: a.InSPI, PeerBoot: a.PeerBoot}, k)
		}),
		ksvc.OpOutbound: onSA(func(ctx context.Context, a ksvc.SA, peer netip.Addr) (any, []*os.File, error) {
			k, err := key(ctx)
			if err != nil {
				return nil, nil, err
			}
			return nil, nil, x.AddOutbound(peer, a.InSPI, a.OutSPI, k)
		}),
		ksvc.OpDelete: onSA(func(_ context.Context, a ksvc.SA, peer netip.Addr) (any, []*os.File, error) {
			return nil, nil, x.Delete(peer, a.InSPI)
		}),
		ksvc.OpStats: onSA(func(_ context.Context, a ksvc.SA, peer netip.Addr) (any, []*os.File, error) {
			st, err := x.Stats(peer, a.InSPI)
			return st, nil, err
		}),
		ksvc.OpSocket: onSA(func(_ context.Context, _ ksvc.SA, peer netip.Addr) (any, []*os.File, error) {
			f, err := x.Socket(peer)
			if err != nil {
				return nil, nil, err
			}
			return nil, []*os.File{f}, nil
		}),
	}
}

// ipsecStatus asks the keying process for each peer's state.
func (b *boot) ipsecStatus() any {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var st []ipsec.PeerStatus
	if err := b.keying.call(ctx, ksvc.OpStatus, nil, &st); err != nil {
		return "no answer from the keying process: " + err.Error()
	}
	return st
}
