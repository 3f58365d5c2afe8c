// Package cidr parses address lists (client allowlists, VPC networks,
// peers, management sources) strictly, and merges them into the sorted,
// disjoint ranges that an nftables interval set holds.
package cidr

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// MaxEntries is the most entries a list may have per address family.
const MaxEntries = 65536

// ParseNetwork parses a network prefix such as "192.168.1.0/24". Host
// bits must be clear; the error says which prefix was probably meant.
func ParseNetwork(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a network prefix (like 192.168.1.0/24 or fd00::/64)", s)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q: write IPv4 networks in dotted form", s)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set; did you mean %s?", s, m)
	}
	return p, nil
}

// ParseEntry parses one list entry: a network prefix, or a single address
// (which stands for itself: /32 or /128).
func ParseEntry(s string) (netip.Prefix, error) {
	if strings.TrimSpace(s) != s || s == "" {
		return netip.Prefix{}, fmt.Errorf("%q: empty or with surrounding spaces", s)
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a network prefix", s)
		}
		if a.Zone() != "" || a.Is4In6() {
			return netip.Prefix{}, fmt.Errorf("%q: zones and IPv4-mapped IPv6 addresses are not allowed", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return ParseNetwork(s)
}

// Range is an inclusive range of addresses of one family.
type Range struct{ From, To netip.Addr }

func (r Range) String() string {
	if r.From == r.To {
		return r.From.String()
	}
	// Print as a prefix when it is one.
	for bits := 0; bits <= r.From.BitLen(); bits++ {
		p := netip.PrefixFrom(r.From, bits)
		if p.Masked().Addr() == r.From && last(p) == r.To {
			return p.String()
		}
	}
	return r.From.String() + "-" + r.To.String()
}

// Contains reports whether a is in the range.
func (r Range) Contains(a netip.Addr) bool {
	return a.BitLen() == r.From.BitLen() && r.From.Compare(a) <= 0 && a.Compare(r.To) <= 0
}

// last returns the last address of a prefix.
func last(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// List is a parsed address list, split by family, merged.
type List struct {
	V4, V6 []Range
	// Entries is how many entries the list had before merging.
	Entries int
}

// Len is the number of merged ranges.
func (l List) Len() int { return len(l.V4) + len(l.V6) }

// Contains reports whether a is in the list.
func (l List) Contains(a netip.Addr) bool {
	rs := l.V6
	if a.Is4() {
		rs = l.V4
	}
	i, _ := slices.BinarySearchFunc(rs, a, func(r Range, a netip.Addr) int {
		switch {
		case r.To.Compare(a) < 0:
			return -1
		case r.From.Compare(a) > 0:
			return 1
		}
		return 0
	})
	return i < len(rs) && rs[i].Contains(a)
}

// String lists the merged ranges, IPv4 first.
func (l List) String() string {
	var s []string
	for _, r := range append(append([]Range(nil), l.V4...), l.V6...) {
		s = append(s, r.String())
	}
	return strings.Join(s, ", ")
}

// ParseList parses entries; the error names the first bad entry by index
// and value. Duplicates and overlapping entries are merged.
func ParseList(entries []string) (List, error) {
	var p4, p6 []netip.Prefix
	for i, e := range entries {
		p, err := ParseEntry(e)
		if err != nil {
			return List{}, fmt.Errorf("[%d]: %w", i, err)
		}
		if p.Addr().Is4() {
			p4 = append(p4, p)
		} else {
			p6 = append(p6, p)
		}
		if len(p4) > MaxEntries || len(p6) > MaxEntries {
			return List{}, fmt.Errorf("[%d]: more than %d entries of one address family", i, MaxEntries)
		}
	}
	return List{V4: merge(p4), V6: merge(p6), Entries: len(entries)}, nil
}

// merge sorts prefixes and joins those that overlap or touch.
func merge(ps []netip.Prefix) []Range {
	if len(ps) == 0 {
		return nil
	}
	rs := make([]Range, len(ps))
	for i, p := range ps {
		rs[i] = Range{p.Addr(), last(p)}
	}
	slices.SortFunc(rs, func(a, b Range) int { return a.From.Compare(b.From) })
	out := rs[:1]
	for _, r := range rs[1:] {
		cur := &out[len(out)-1]
		next := cur.To.Next()
		if r.From.Compare(cur.To) <= 0 || (next.IsValid() && r.From == next) {
			if r.To.Compare(cur.To) > 0 {
				cur.To = r.To
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// IsPrivate reports whether a whole range lies in private address space:
// RFC 1918, shared address space (RFC 6598), or IPv6 unique local
// addresses. VPC networks must be private.
func IsPrivate(r Range) bool {
	for _, s := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"} {
		p := netip.MustParsePrefix(s)
		if p.Contains(r.From) && p.Contains(r.To) {
			return true
		}
	}
	return false
}
