// Package network applies the node's network configuration over netlink:
// interfaces, MTU, static addresses, routes, DHCPv4 leases and the hostname.
package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/config"
)

// linkWait bounds how long Apply waits for a configured interface to appear.
const linkWait = 5 * time.Second

// Apply brings the network up as configured. It returns a one-line summary
// for the readiness report.
func Apply(ctx context.Context, log *slog.Logger, hostname string, n config.Network) (string, error) {
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		return "", fmt.Errorf("network: setting hostname: %w", err)
	}
	if err := upLoopback(); err != nil {
		return "", fmt.Errorf("network: lo up: %w", err)
	}
	var summary []string
	for _, ifc := range n.Interfaces {
		s, err := applyInterface(ctx, log, ifc)
		if err != nil {
			return "", err
		}
		summary = append(summary, s)
	}
	for i, r := range n.Routes {
		if err := addRoute(r); err != nil {
			return "", fmt.Errorf("network: network.routes[%d] (%s): %w", i, r.To, err)
		}
	}
	if len(n.Routes) > 0 {
		summary = append(summary, fmt.Sprintf("%d routes", len(n.Routes)))
	}
	if len(summary) == 0 {
		return "no interfaces configured", nil
	}
	return strings.Join(summary, "; "), nil
}

// upLoopback sets lo's IFF_UP flag with two ioctls. A netlink lookup of lo
// parses every attribute the kernel reports for it, which under emulation
// took as long as bringing the interface up.
func upLoopback() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func waitLink(ctx context.Context, name string) (netlink.Link, error) {
	deadline := time.Now().Add(linkWait)
	for {
		l, err := netlink.LinkByName(name)
		if err == nil {
			return l, nil
		}
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) || time.Now().After(deadline) {
			return nil, fmt.Errorf("network: interface %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func applyInterface(ctx context.Context, log *slog.Logger, ifc config.Interface) (string, error) {
	link, err := waitLink(ctx, ifc.Name)
	if err != nil {
		return "", err
	}
	if ifc.MTU != 0 {
		if err := netlink.LinkSetMTU(link, ifc.MTU); err != nil {
			return "", fmt.Errorf("network: %s: setting MTU %d: %w", ifc.Name, ifc.MTU, err)
		}
	}
	var addrs []string
	for _, a := range ifc.Addresses {
		p, err := config.ParseHostPrefix(a)
		if err != nil {
			return "", fmt.Errorf("network: %s: %w", ifc.Name, err)
		}
		addr := &netlink.Addr{IPNet: prefixNet(p)}
		if p.Addr().Is6() {
			// The control plane assigns unique addresses; skipping duplicate
			// address detection makes the address usable when "ready" says so.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return "", fmt.Errorf("network: %s: adding %s: %w", ifc.Name, a, err)
		}
		addrs = append(addrs, a)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("network: %s up: %w", ifc.Name, err)
	}
	if ifc.DHCP4 {
		lease, err := dhcp4(ctx, log, link)
		if err != nil {
			return "", err
		}
		addrs = append(addrs, lease+" (dhcp)")
	}
	mtu := ifc.MTU
	if l, err := netlink.LinkByIndex(link.Attrs().Index); err == nil {
		mtu = l.Attrs().MTU
	}
	if len(addrs) == 0 {
		addrs = []string{"no addresses"}
	}
	return fmt.Sprintf("%s %s mtu %d", ifc.Name, strings.Join(addrs, " "), mtu), nil
}

func addRoute(r config.Route) error {
	to, err := config.ParseNetworkPrefix(r.To)
	if err != nil {
		return err
	}
	route := &netlink.Route{Dst: prefixNet(to)}
	if r.Via != "" {
		gw, err := netip.ParseAddr(r.Via)
		if err != nil {
			return err
		}
		route.Gw = net.IP(gw.AsSlice())
	} else {
		route.Scope = netlink.SCOPE_LINK
	}
	if r.Interface != "" {
		l, err := netlink.LinkByName(r.Interface)
		if err != nil {
			return err
		}
		route.LinkIndex = l.Attrs().Index
	}
	return netlink.RouteReplace(route)
}

func prefixNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}
