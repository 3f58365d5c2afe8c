package keying

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/bulwarkvm/bulwark/internal/control"
	"github.com/bulwarkvm/bulwark/internal/ipsec"
)

// kernel is the keying process's ipsec.Kernel: every change to the XFRM
// state is a request to PID1, which checks it (ipsec.XFRM). Keys travel
// as key material of the request (control.CallSecret): in locked memory
// on both ends, never in the JSON.
type kernel struct{ peer *control.Peer }

// callTimeout bounds each request to PID1.
const callTimeout = 10 * time.Second

func (k *kernel) call(op string, args SA, result any) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	fds, err := k.peer.Call(ctx, op, args, result)
	for _, f := range fds {
		f.Close()
	}
	return err
}

func (k *kernel) AllocSPI(peer netip.Addr) (uint32, error) {
	var out SA
	if err := k.call(OpSPI, SA{Peer: peer.String()}, &out); err != nil {
		return 0, err
	}
	return out.SPI, nil
}

func (k *kernel) AddInbound(peer netip.Addr, g ipsec.Generation, key []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return k.peer.CallSecret(ctx, OpInbound, SA{Peer: peer.String(), InSPI: g.InSPI, Gen: g.Gen, PeerBoot: g.PeerBoot}, key, nil)
}

func (k *kernel) AddOutbound(peer netip.Addr, inSPI, outSPI uint32, key []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return k.peer.CallSecret(ctx, OpOutbound, SA{Peer: peer.String(), InSPI: inSPI, OutSPI: outSPI}, key, nil)
}

func (k *kernel) Delete(peer netip.Addr, inSPI uint32) error {
	return k.call(OpDelete, SA{Peer: peer.String(), InSPI: inSPI}, nil)
}

func (k *kernel) Stats(peer netip.Addr, inSPI uint32) (ipsec.SAStats, error) {
	var s ipsec.SAStats
	err := k.call(OpStats, SA{Peer: peer.String(), InSPI: inSPI}, &s)
	return s, err
}

func (k *kernel) Dial(ctx context.Context, peer netip.Addr, port int) (net.Conn, error) {
	fds, err := k.peer.Call(ctx, OpSocket, SA{Peer: peer.String()}, nil)
	if err != nil {
		return nil, err
	}
	if len(fds) != 1 {
		for _, f := range fds {
			f.Close()
		}
		return nil, fmt.Errorf("PID1 gave %d keying sockets, want 1", len(fds))
	}
	return ipsec.ConnectSocket(ctx, fds[0], peer, port)
}
