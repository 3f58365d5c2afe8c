package network

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

const dhcpTimeout = 20 * time.Second

// dhcp4 obtains a lease, applies its address, default route and MTU, and
// keeps renewing it in the background for as long as the node runs. It
// returns the leased address with its prefix length.
func dhcp4(ctx context.Context, log *slog.Logger, link netlink.Link) (string, error) {
	name := link.Attrs().Name
	c, err := nclient4.New(name, nclient4.WithTimeout(3*time.Second), nclient4.WithRetry(5))
	if err != nil {
		return "", fmt.Errorf("network: %s: dhcp4: %w", name, err)
	}
	rctx, cancel := context.WithTimeout(ctx, dhcpTimeout)
	defer cancel()
	lease, err := c.Request(rctx, dhcpv4.WithRequestedOptions(dhcpv4.OptionInterfaceMTU))
	if err != nil {
		c.Close()
		return "", fmt.Errorf("network: %s: dhcp4: no lease: %w", name, err)
	}
	addr, err := applyLease(link, lease.ACK)
	if err != nil {
		c.Close()
		return "", err
	}
	// A panic in the renewal runs it again (with backoff) instead of
	// ending the process: PID1 must outlive any bug in it.
	safego.Loop("dhcp renewal", nil, func() { renew(log, c, link, lease) })
	return addr, nil
}

func applyLease(link netlink.Link, ack *dhcpv4.DHCPv4) (string, error) {
	name := link.Attrs().Name
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	ipnet := &net.IPNet{IP: ack.YourIPAddr.To4(), Mask: mask}
	valid := ack.IPAddressLeaseTime(time.Hour)
	addr := &netlink.Addr{IPNet: ipnet, ValidLft: int(valid.Seconds()), PreferedLft: int(valid.Seconds())}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return "", fmt.Errorf("network: %s: dhcp4 address %s: %w", name, ipnet, err)
	}
	if mtu := ack.Options.Get(dhcpv4.OptionInterfaceMTU); len(mtu) == 2 {
		if m := int(binary.BigEndian.Uint16(mtu)); m >= 576 {
			if err := netlink.LinkSetMTU(link, m); err != nil {
				return "", fmt.Errorf("network: %s: dhcp4 MTU %d: %w", name, m, err)
			}
		}
	}
	if gws := ack.Router(); len(gws) > 0 {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gws[0], Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}
		if err := netlink.RouteReplace(r); err != nil {
			return "", fmt.Errorf("network: %s: dhcp4 default route via %s: %w", name, gws[0], err)
		}
	}
	return ipnet.String(), nil
}

// renew renews the lease at the renewal time (T1), retrying on failure.
func renew(log *slog.Logger, c *nclient4.Client, link netlink.Link, lease *nclient4.Lease) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("dhcp4 renewal stopped", "interface", link.Attrs().Name, "panic", fmt.Sprint(r))
		}
	}()
	for {
		t1 := lease.ACK.IPAddressRenewalTime(lease.ACK.IPAddressLeaseTime(time.Hour) / 2)
		time.Sleep(t1)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), dhcpTimeout)
			next, err := c.Renew(ctx, lease)
			cancel()
			if err == nil {
				if _, err = applyLease(link, next.ACK); err == nil {
					lease = next
					break
				}
			}
			log.Warn("dhcp4 renewal failed; retrying", "interface", link.Attrs().Name, "err", err)
			time.Sleep(30 * time.Second)
		}
	}
}
