package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/bulwarkvm/bulwark/internal/cidr"
	"github.com/bulwarkvm/bulwark/internal/config"
)

// Policy is the node's whole filter policy, resolved from the config.
type Policy struct {
	ClientPorts []uint16
	Clients     cidr.List
	// VPC, when it has entries, is VPC mode: a client must be in VPC and
	// in Clients.
	VPC            cidr.List
	Peers          cidr.List
	PeerPorts      []uint16
	KeyingPort     uint16
	Management     cidr.List
	ManagementPort uint16
	Egress         []Destination
	// DHCP4 admits DHCPv4 replies (and lets requests out).
	DHCP4 bool
	// Drop silently drops refused packets instead of rejecting them.
	Drop bool
}

// Destination is an allowed outbound destination: a range of addresses,
// a transport protocol and a port, and optionally the one local user
// whose sockets may connect there.
type Destination struct {
	What  string // "backup", "dns", "ntp", "metadata"
	Range cidr.Range
	Proto string // "tcp" or "udp"
	Port  uint16
	// UID, when set, limits the destination to sockets owned by that uid
	// (nftables meta skuid); nil admits every local process.
	UID *uint32
}

// VPCMode reports whether clients are limited to the VPC networks.
func (p *Policy) VPCMode() bool { return p.VPC.Len() > 0 }

// FromConfig resolves the config's firewall section (defaults included)
// and the network facts the policy needs (DHCP).
func FromConfig(c *config.Config) (*Policy, error) {
	f := c.Firewall
	if f == nil {
		f = &config.Firewall{}
	}
	p := &Policy{
		KeyingPort:     uint16(f.EffectiveKeyingPort()),
		ManagementPort: uint16(f.EffectiveManagementPort()),
		Drop:           f.Blocked == "drop",
	}
	for _, port := range f.EffectiveClientPorts() {
		p.ClientPorts = append(p.ClientPorts, uint16(port))
	}
	for _, port := range f.PeerPorts {
		p.PeerPorts = append(p.PeerPorts, uint16(port))
	}
	lists := []struct {
		path    string
		entries []string
		dst     *cidr.List
	}{
		{"firewall.clients", f.EffectiveClients(), &p.Clients},
		{"firewall.vpc_networks", f.VPCNetworks, &p.VPC},
		{"firewall.peers", append(slices.Clone(f.Peers), ipsecPeers(c)...), &p.Peers},
		{"firewall.management_sources", f.ManagementSources, &p.Management},
	}
	for _, l := range lists {
		parsed, err := cidr.ParseList(l.entries)
		if err != nil {
			return nil, fmt.Errorf("firewall: %s%w", l.path, err)
		}
		*l.dst = parsed
	}
	if err := checkVPC(p.VPC); err != nil {
		return nil, err
	}
	for i, e := range f.Egress.Backup {
		pr, err := cidr.ParseEntry(e.Address)
		if err != nil {
			return nil, fmt.Errorf("firewall: firewall.egress.backup[%d].address: %w", i, err)
		}
		p.Egress = append(p.Egress, Destination{What: "backup", Range: prefixRange(pr), Proto: "tcp", Port: uint16(e.Port)})
	}
	for _, d := range []struct {
		what    string
		entries []string
		ports   []Destination
	}{
		{"dns", f.Egress.DNS, []Destination{{Proto: "udp", Port: 53}, {Proto: "tcp", Port: 53}}},
		{"ntp", f.Egress.NTP, []Destination{{Proto: "udp", Port: 123}}},
	} {
		for i, e := range d.entries {
			pr, err := cidr.ParseEntry(e)
			if err != nil {
				return nil, fmt.Errorf("firewall: firewall.egress.%s[%d]: %w", d.what, i, err)
			}
			for _, port := range d.ports {
				p.Egress = append(p.Egress, Destination{What: d.what, Range: prefixRange(pr), Proto: port.Proto, Port: port.Port})
			}
		}
	}
	// The metadata service hands the instance's credentials to any
	// process that can connect, so it is open only when the config asks,
	// and then only to the one uid it names.
	if m := f.MetadataEgress(); m != nil {
		d, err := metadataDestination(m)
		if err != nil {
			return nil, err
		}
		p.Egress = append(p.Egress, d)
	}
	for _, ifc := range c.Network.Interfaces {
		p.DHCP4 = p.DHCP4 || ifc.DHCP4
	}
	return p, nil
}

// metadataDestination checks the metadata opening again (a Policy may
// be built from a config that was never validated) and resolves it.
func metadataDestination(m *config.Metadata) (Destination, error) {
	const at = "firewall: firewall.egress.metadata"
	a, err := netip.ParseAddr(m.Address)
	if err != nil || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return Destination{}, fmt.Errorf("%s.address: %q is not a unicast IP address", at, m.Address)
	}
	if m.Port < 1 || m.Port > 65535 {
		return Destination{}, fmt.Errorf("%s.port: %d is not a TCP port (1 to 65535)", at, m.Port)
	}
	if m.UID == nil || *m.UID < 0 || *m.UID > 65534 {
		return Destination{}, fmt.Errorf("%s.uid: give the one uid (0 to 65534) that may reach the metadata service", at)
	}
	uid := uint32(*m.UID)
	return Destination{What: "metadata", Range: cidr.Range{From: a, To: a}, Proto: "tcp", Port: uint16(m.Port), UID: &uid}, nil
}

func checkVPC(vpc cidr.List) error {
	for _, r := range append(slices.Clone(vpc.V4), vpc.V6...) {
		if !cidr.IsPrivate(r) {
			return fmt.Errorf("firewall: VPC network %s is not private address space; VPC mode never admits public addresses", r)
		}
	}
	return nil
}

func prefixRange(p netip.Prefix) cidr.Range {
	l, _ := cidr.ParseList([]string{p.String()})
	if len(l.V4) > 0 {
		return l.V4[0]
	}
	return l.V6[0]
}

// Summary is the policy in a few readable lines, for the readiness report
// and the status call.
func (p *Policy) Summary() []string {
	ports := func(ps []uint16) string {
		var s []string
		for _, x := range ps {
			s = append(s, fmt.Sprint(x))
		}
		if len(s) == 0 {
			return "none"
		}
		return strings.Join(s, ",")
	}
	list := func(l cidr.List) string {
		if l.Len() == 0 {
			return "none"
		}
		if l.Len() > 8 {
			return fmt.Sprintf("%d ranges from %d entries", l.Len(), l.Entries)
		}
		return l.String()
	}
	mode := "public"
	if p.VPCMode() {
		mode = "VPC (" + list(p.VPC) + ")"
	}
	blocked := "reject"
	if p.Drop {
		blocked = "drop"
	}
	var egress []string
	for _, d := range p.Egress {
		line := fmt.Sprintf("%s %s %s/%d", d.What, d.Range, d.Proto, d.Port)
		if d.UID != nil {
			line += fmt.Sprintf(" uid %d only", *d.UID)
		}
		egress = append(egress, line)
	}
	if len(egress) == 0 {
		egress = []string{"none"}
	}
	peers := "peers: none"
	if p.Peers.Len() > 0 {
		peers = fmt.Sprintf("peers %s: esp, tcp %d (keying), tcp %s (service)", list(p.Peers), p.KeyingPort, ports(p.PeerPorts))
	}
	mgmt := fmt.Sprintf("management tcp %d: closed (no sources)", p.ManagementPort)
	if p.Management.Len() > 0 {
		mgmt = fmt.Sprintf("management tcp %d from %s", p.ManagementPort, list(p.Management))
	}
	return []string{
		fmt.Sprintf("default deny in and out; blocked connections: %s; mode %s", blocked, mode),
		fmt.Sprintf("clients on tcp %s from %s", ports(p.ClientPorts), list(p.Clients)),
		peers,
		mgmt,
		"egress: " + strings.Join(egress, "; "),
	}
}

// ipsecPeers are the addresses of the IPsec peers: ESP, keying and the
// peer ports are open to them without repeating them in firewall.peers.
func ipsecPeers(c *config.Config) []string {
	if c.IPsec == nil {
		return nil
	}
	var out []string
	for _, p := range c.IPsec.Peers {
		out = append(out, p.Address)
	}
	return out
}
