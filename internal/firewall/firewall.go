// Package firewall is the node's packet filter: the whole policy as one
// nftables table (inet bulwark) built from the config and applied over
// netlink in one atomic batch, and live replacement of its address lists
// (client allowlist, VPC networks, peers, management sources), also one
// atomic batch each. See docs/firewall.md.
package firewall

import (
	"errors"
	"fmt"
	"runtime/debug"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/cidr"
)

// Firewall owns the bulwark table in one network namespace.
type Firewall struct {
	mu     sync.Mutex
	conn   *nftables.Conn
	policy *Policy
}

// Open connects to nf_tables in the current network namespace, or in the
// one netnsFd refers to when it is not negative (tests).
func Open(netnsFd int) (*Firewall, error) {
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bigBuffers)}
	if netnsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("firewall: netlink: %w", err)
	}
	return &Firewall{conn: c}, nil
}

// Close closes the netlink connection; the rules stay.
func (f *Firewall) Close() error { return f.conn.CloseLasting() }

// Apply replaces the whole table with p in one transaction.
func (f *Firewall) Apply(p *Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := checkVPC(p.VPC); err != nil {
		return err
	}
	defer roomyGC(p.Clients.Len() + p.VPC.Len() + p.Peers.Len() + p.Management.Len())()
	if err := queueReplace(f.conn, p); err != nil {
		return fmt.Errorf("firewall: building the ruleset: %w", err)
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("firewall: applying the ruleset: %w", err)
	}
	cp := *p
	f.policy = &cp
	return nil
}

// Policy returns a copy of the policy in force.
func (f *Firewall) Policy() *Policy {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.policy == nil {
		return nil
	}
	cp := *f.policy
	return &cp
}

// Replace swaps the contents of one address list (SetClients, SetVPC,
// SetPeers, SetManagement) in one transaction: connections already
// established are not touched, and a source that is in both the old and
// the new list is admitted at every instant. The entries are checked
// first; on any error nothing changes. The warning is non-empty when the
// change is allowed but worth saying (an empty client allowlist).
func (f *Firewall) Replace(set string, entries []string) (warning string, err error) {
	known := false
	for _, s := range addressSets {
		known = known || s == set
	}
	if !known {
		return "", fmt.Errorf("firewall: %q is not a replaceable list (clients, vpc, peers, management)", set)
	}
	defer roomyGC(len(entries))()
	l, err := cidr.ParseList(entries)
	if err != nil {
		return "", fmt.Errorf("firewall: %s%w", set, err)
	}
	if set == SetVPC {
		if err := checkVPC(l); err != nil {
			return "", err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.policy == nil {
		return "", errors.New("firewall: no policy applied yet")
	}
	if set == SetVPC && (l.Len() == 0) != (f.policy.VPC.Len() == 0) {
		return "", errors.New("firewall: switching VPC mode on or off changes rules, not only a list; apply a whole new policy")
	}
	t := table()
	for _, fam := range []family{fam4, fam6} {
		s := &nftables.Set{Table: t, Name: set + fam.suffix, KeyType: fam.keyType, Interval: true}
		f.conn.FlushSet(s)
		if els := elements(l, fam); len(els) > 0 {
			if err := f.conn.SetAddElements(s, els); err != nil {
				return "", fmt.Errorf("firewall: %s: %w", set, err)
			}
		}
	}
	if err := f.conn.Flush(); err != nil {
		return "", fmt.Errorf("firewall: replacing %s: %w", set, err)
	}
	p := *f.policy
	switch set {
	case SetClients:
		p.Clients = l
		if l.Len() == 0 {
			warning = "the client allowlist is empty: no client can connect"
		}
	case SetVPC:
		p.VPC = l
	case SetPeers:
		p.Peers = l
	case SetManagement:
		p.Management = l
	}
	f.policy = &p
	return warning, nil
}

// socketBuffer bounds one transaction: the kernel refuses a netlink batch
// larger than the socket's send buffer, and a batch with the largest
// allowed lists (cidr.MaxEntries per family) is about 10 MiB.
const socketBuffer = 32 << 20

// bigBuffers raises the netlink socket's buffers past the system limits
// (SO_SNDBUFFORCE needs CAP_NET_ADMIN, which nf_tables needs anyway), so
// that a whole policy always fits in one atomic batch.
func bigBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("firewall: netlink socket buffers: %w", serr)
	}
	return nil
}

// roomyGC lets the heap grow further between collections while a large
// batch is encoded, and returns the function that restores the setting.
// Encoding one set element makes about five small allocations in the
// netlink library; with the default GOGC a 10,000-range list triggers
// several collections within one transaction, which then costs about twice
// as long (docs/performance.md). Small batches are left alone.
func roomyGC(ranges int) func() {
	if ranges < 1000 {
		return func() {}
	}
	old := debug.SetGCPercent(400)
	return func() { debug.SetGCPercent(old) }
}
