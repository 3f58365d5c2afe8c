package firewall

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/cidr"
)

// TableName is the one table bulwark owns, in the inet family (IPv4 and
// IPv6 together), so `nft list table inet bulwark` shows the whole policy.
const TableName = "bulwark"

// The named sets. The address sets are interval sets, one per family;
// live updates swap their contents.
const (
	SetClients    = "clients"
	SetVPC        = "vpc"
	SetPeers      = "peers"
	SetManagement = "management"
	setClientPort = "client_ports"
	setPeerPort   = "peer_ports"
)

// addressSets are the lists that live updates may replace.
var addressSets = []string{SetClients, SetVPC, SetPeers, SetManagement}

type family struct {
	suffix  string // "4" or "6"
	nfproto byte
	// saddr/daddr offsets and length in the network header
	saddr, daddr, alen uint32
	keyType            nftables.SetDatatype
	icmpProto          byte
}

var (
	fam4 = family{"4", unix.NFPROTO_IPV4, 12, 16, 4, nftables.TypeIPAddr, unix.IPPROTO_ICMP}
	fam6 = family{"6", unix.NFPROTO_IPV6, 8, 24, 16, nftables.TypeIP6Addr, unix.IPPROTO_ICMPV6}
)

// builder queues one policy into a batch on a Conn.
type builder struct {
	c      *nftables.Conn
	t      *nftables.Table
	sets   map[string]*nftables.Set
	in     *nftables.Chain
	out    *nftables.Chain
	p      *Policy
	reject bool
	err    error // the first error while queueing
}

func table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

// queueReplace queues, into one batch, the removal of any old table and
// the creation of the whole policy. The kernel applies the batch as one
// transaction: there is no instant without a policy.
func queueReplace(c *nftables.Conn, p *Policy) error {
	t := table()
	// Adding before deleting makes the delete valid whether or not the
	// table existed.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	b := &builder{c: c, t: t, sets: map[string]*nftables.Set{}, p: p, reject: !p.Drop}
	if err := b.addSets(); err != nil {
		return err
	}
	drop := nftables.ChainPolicyDrop
	b.in = c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	b.out = c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	b.inputRules()
	b.outputRules()
	return b.err
}

func (b *builder) addSets() error {
	for _, name := range addressSets {
		for _, f := range []family{fam4, fam6} {
			s := &nftables.Set{Table: b.t, Name: name + f.suffix, KeyType: f.keyType, Interval: true}
			if err := b.c.AddSet(s, elements(b.p.list(name), f)); err != nil {
				return err
			}
			b.sets[s.Name] = s
		}
	}
	for name, ports := range map[string][]uint16{setClientPort: b.p.ClientPorts, setPeerPort: b.p.PeerPorts} {
		s := &nftables.Set{Table: b.t, Name: name, KeyType: nftables.TypeInetService}
		var els []nftables.SetElement
		for _, p := range ports {
			els = append(els, nftables.SetElement{Key: be16(p)})
		}
		if err := b.c.AddSet(s, els); err != nil {
			return err
		}
		b.sets[name] = s
	}
	return nil
}

// list returns the policy's list behind a set name.
func (p *Policy) list(name string) cidr.List {
	switch name {
	case SetClients:
		return p.Clients
	case SetVPC:
		return p.VPC
	case SetPeers:
		return p.Peers
	case SetManagement:
		return p.Management
	}
	panic("firewall: unknown set " + name)
}

// elements turns merged ranges into interval-set elements: each range is
// a start element and an end element one past its last address. A range
// that ends at the top of the address space (0.0.0.0/0, ::/0) has no end
// element: the interval runs to the end.
func elements(l cidr.List, f family) []nftables.SetElement {
	rs := l.V4
	if f.suffix == "6" {
		rs = l.V6
	}
	// One backing array for every key: lists run to tens of thousands of
	// ranges, and this is on the path of every live update.
	keys := make([]byte, 0, 2*len(rs)*int(f.alen))
	els := make([]nftables.SetElement, 0, 2*len(rs))
	key := func(a netip.Addr) []byte {
		n := len(keys)
		if a.Is4() {
			b := a.As4()
			keys = append(keys, b[:]...)
		} else {
			b := a.As16()
			keys = append(keys, b[:]...)
		}
		return keys[n:len(keys):len(keys)]
	}
	for _, r := range rs {
		els = append(els, nftables.SetElement{Key: key(r.From)})
		if next := r.To.Next(); next.IsValid() {
			els = append(els, nftables.SetElement{Key: key(next), IntervalEnd: true})
		}
	}
	return els
}

// Expression helpers. Register 1 holds the value under test.

func nfproto(f family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
	}
}

func l4proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

func port(offset uint32, p uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(p)},
	}
}

func (b *builder) portIn(set string) []expr.Any {
	s := b.sets[set]
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

func (b *builder) addrIn(f family, offset uint32, set string) []expr.Any {
	s := b.sets[set+f.suffix]
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: f.alen},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

func addrRange(f family, offset uint32, r cidr.Range) []expr.Any {
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: f.alen}
	if r.From == r.To {
		return []expr.Any{load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: r.From.AsSlice()}}
	}
	return []expr.Any{load, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: r.From.AsSlice(), ToData: r.To.AsSlice()}}
}

func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: le32(bits), Xor: le32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: le32(0)},
	}
}

// icmpType matches ICMP (or ICMPv6) messages of the given types, through
// an anonymous constant set added to the batch.
func (b *builder) icmpType(f family, types ...byte) []expr.Any {
	s := &nftables.Set{Table: b.t, Anonymous: true, Constant: true, KeyType: nftables.TypeICMPType}
	if f.suffix == "6" {
		s.KeyType = nftables.TypeICMP6Type
	}
	var els []nftables.SetElement
	for _, t := range types {
		els = append(els, nftables.SetElement{Key: []byte{t}})
	}
	if err := b.c.AddSet(s, els); err != nil {
		b.err = err
	}
	return append(l4proto(f.icmpProto),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID})
}

var (
	accept = &expr.Verdict{Kind: expr.VerdictAccept}
	drop   = &expr.Verdict{Kind: expr.VerdictDrop}
)

func (b *builder) rule(ch *nftables.Chain, parts ...[]expr.Any) {
	var exprs []expr.Any
	for _, p := range parts {
		exprs = append(exprs, p...)
	}
	b.c.AddRule(&nftables.Rule{Table: b.t, Chain: ch, Exprs: exprs})
}

func v(e ...expr.Any) []expr.Any { return e }

// ICMP types the network needs.
var (
	icmp4Needed = []byte{3, 11, 12}                      // destination unreachable (with fragmentation needed), time exceeded, parameter problem
	icmp6Needed = []byte{1, 2, 3, 4, 130, 134, 135, 136} // unreachable, packet too big, time exceeded, parameter problem, MLD query, RA, NS, NA
	icmp6Out    = []byte{1, 2, 3, 4, 133, 135, 136, 143} // the same errors, RS, NS, NA, MLDv2 report
)

func (b *builder) inputRules() {
	in := b.in
	b.rule(in, v(&expr.Meta{Key: expr.MetaKeyIIF, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: le32(1)}), v(accept))
	// Neighbour discovery and ICMP errors come first: conntrack calls
	// ND messages invalid, and the network does not work without them.
	b.rule(in, nfproto(fam4), b.icmpType(fam4, icmp4Needed...), v(accept))
	b.rule(in, nfproto(fam6), b.icmpType(fam6, icmp6Needed...), v(accept))
	b.rule(in, ctState(expr.CtStateBitINVALID), v(drop))
	b.rule(in, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), v(accept))
	for _, f := range []family{fam4, fam6} {
		echo := byte(8)
		if f.suffix == "6" {
			echo = 128
		}
		// Echo requests only from sources that may connect at all,
		// rate-limited.
		for _, src := range b.sources(f) {
			b.rule(in, nfproto(f), src, b.icmpType(f, echo),
				v(&expr.Limit{Type: expr.LimitTypePkts, Rate: 20, Unit: expr.LimitTimeSecond, Burst: 50}), v(accept))
		}
		tcp := l4proto(unix.IPPROTO_TCP)
		clientSrc := b.addrIn(f, f.saddr, SetClients)
		if b.p.VPCMode() {
			clientSrc = append(b.addrIn(f, f.saddr, SetVPC), clientSrc...)
		}
		b.rule(in, nfproto(f), clientSrc, tcp, b.portIn(setClientPort), v(&expr.Counter{}), v(accept))
		peers := b.addrIn(f, f.saddr, SetPeers)
		b.rule(in, nfproto(f), peers, l4proto(unix.IPPROTO_ESP), v(accept))
		b.rule(in, nfproto(f), peers, tcp, port(2, b.p.KeyingPort), v(accept))
		b.rule(in, nfproto(f), peers, tcp, b.portIn(setPeerPort), v(accept))
		b.rule(in, nfproto(f), b.addrIn(f, f.saddr, SetManagement), tcp, port(2, b.p.ManagementPort), v(accept))
	}
	if b.p.DHCP4 {
		b.rule(in, nfproto(fam4), l4proto(unix.IPPROTO_UDP), port(0, 67), port(2, 68), v(accept))
	}
	b.refuse(in)
}

// sources are the match expressions of every source class that may
// connect: clients (within the VPC in VPC mode), peers, management.
func (b *builder) sources(f family) [][]expr.Any {
	clients := b.addrIn(f, f.saddr, SetClients)
	if b.p.VPCMode() {
		clients = append(b.addrIn(f, f.saddr, SetVPC), clients...)
	}
	return [][]expr.Any{clients, b.addrIn(f, f.saddr, SetPeers), b.addrIn(f, f.saddr, SetManagement)}
}

func (b *builder) outputRules() {
	out := b.out
	b.rule(out, v(&expr.Meta{Key: expr.MetaKeyOIF, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: le32(1)}), v(accept))
	b.rule(out, nfproto(fam4), b.icmpType(fam4, icmp4Needed...), v(accept))
	b.rule(out, nfproto(fam6), b.icmpType(fam6, icmp6Out...), v(accept))
	b.rule(out, ctState(expr.CtStateBitINVALID), v(drop))
	b.rule(out, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), v(accept))
	if b.p.DHCP4 {
		b.rule(out, nfproto(fam4), l4proto(unix.IPPROTO_UDP), port(0, 68), port(2, 67), v(accept))
	}
	// The cloud metadata service hands the instance's credentials to
	// whoever asks. The one opening the config makes (one uid, one port)
	// comes first; then its well-known addresses, and the configured one,
	// are refused to everything else, before any other egress rule: a peer
	// or backup range that happens to contain one opens nothing.
	for _, d := range b.p.Egress {
		if d.What == "metadata" {
			b.egressRule(out, d)
		}
	}
	for _, a := range metadataAddrs(b.p) {
		f := fam4
		if !a.Is4() {
			f = fam6
		}
		b.refuseTo(out, nfproto(f), addrRange(f, f.daddr, cidr.Range{From: a, To: a}))
	}
	for _, f := range []family{fam4, fam6} {
		b.rule(out, nfproto(f), b.addrIn(f, f.daddr, SetPeers), v(accept))
	}
	for _, d := range b.p.Egress {
		if d.What == "metadata" {
			continue
		}
		b.egressRule(out, d)
	}
	b.refuse(out)
}

// WellKnownMetadata are the addresses clouds serve their metadata service
// on (169.254.169.254 for the common clouds, fd00:ec2::254 for AWS over
// IPv6): refused to every socket unless the config opens one to one uid.
var WellKnownMetadata = []netip.Addr{netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("fd00:ec2::254")}

func metadataAddrs(p *Policy) []netip.Addr {
	out := append([]netip.Addr{}, WellKnownMetadata...)
	for _, d := range p.Egress {
		if d.What == "metadata" && !slices.Contains(out, d.Range.From) {
			out = append(out, d.Range.From)
		}
	}
	return out
}

// refuseTo refuses what matches m with the chain's refusal (a reset or
// an ICMP error, or a drop).
func (b *builder) refuseTo(ch *nftables.Chain, m ...[]expr.Any) {
	if !b.reject {
		b.rule(ch, append(m, v(&expr.Counter{}), v(drop))...)
		return
	}
	b.rule(ch, append(m, l4proto(unix.IPPROTO_TCP), v(&expr.Counter{}), v(&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}))...)
	b.rule(ch, append(m, v(&expr.Counter{}), v(&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}))...)
}

// egressRule opens one destination.
func (b *builder) egressRule(out *nftables.Chain, d Destination) {
	f := fam4
	if !d.Range.From.Is4() {
		f = fam6
	}
	proto := byte(unix.IPPROTO_TCP)
	if d.Proto == "udp" {
		proto = unix.IPPROTO_UDP
	}
	b.rule(out, nfproto(f), addrRange(f, f.daddr, d.Range), l4proto(proto), port(2, d.Port), b.owner(d), v(accept))
}

// owner matches the socket's owner when d is limited to one uid: meta
// skuid is the fsuid of the process that opened the socket. A packet
// with no full socket behind it (one sent from TIME_WAIT, say) matches no
// uid, so it is refused; the rule admits the user's new connections, and
// their later packets pass as established.
func (b *builder) owner(d Destination) []expr.Any {
	if d.UID == nil {
		return nil
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: le32(*d.UID)},
	}
}

// refuse ends a chain: count, then reject (TCP reset for TCP, ICMP
// administratively prohibited otherwise) or drop.
func (b *builder) refuse(ch *nftables.Chain) {
	if !b.reject {
		b.rule(ch, v(&expr.Counter{}), v(drop))
		return
	}
	b.rule(ch, l4proto(unix.IPPROTO_TCP), v(&expr.Counter{}), v(&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}))
	b.rule(ch, v(&expr.Counter{}), v(&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}))
}

func be16(p uint16) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, p)
	return b
}

func le32(x uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, x)
	return b
}
