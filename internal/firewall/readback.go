package firewall

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// Ruleset reads the bulwark table back from the kernel and renders it in
// a canonical text: its chains in name order (type, hook, priority,
// policy), each chain's rules in order with their expressions, and its
// sets in name order with their elements sorted. Rule handles, set ids and
// counter values are left out: they change from boot to boot or packet to
// packet, while the policy does not. The node measures this rendering into
// the TPM (docs/attestation.md), so what is measured is what the kernel
// holds, not what the init meant to send.
func (f *Firewall) Ruleset() ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := table()
	var b bytes.Buffer
	fmt.Fprintf(&b, "table inet %s\n", t.Name)
	chains, err := f.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("firewall: listing chains: %w", err)
	}
	chains = slices.DeleteFunc(chains, func(c *nftables.Chain) bool { return c.Table.Name != t.Name })
	slices.SortFunc(chains, func(a, c *nftables.Chain) int { return strings.Compare(a.Name, c.Name) })
	for _, c := range chains {
		fmt.Fprintf(&b, "chain %s type %s", c.Name, c.Type)
		if c.Hooknum != nil {
			fmt.Fprintf(&b, " hook %d", *c.Hooknum)
		}
		if c.Priority != nil {
			fmt.Fprintf(&b, " priority %d", *c.Priority)
		}
		if c.Policy != nil {
			fmt.Fprintf(&b, " policy %d", *c.Policy)
		}
		b.WriteByte('\n')
		rules, err := f.conn.GetRules(t, c)
		if err != nil {
			return nil, fmt.Errorf("firewall: listing rules of %s: %w", c.Name, err)
		}
		for _, r := range rules {
			b.WriteString("  rule")
			for _, e := range r.Exprs {
				b.WriteString(" ")
				b.WriteString(renderExpr(e))
			}
			b.WriteByte('\n')
		}
	}
	sets, err := f.conn.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("firewall: listing sets: %w", err)
	}
	slices.SortFunc(sets, func(a, c *nftables.Set) int { return strings.Compare(a.Name, c.Name) })
	for _, s := range sets {
		fmt.Fprintf(&b, "set %s key %s interval %v constant %v\n", s.Name, s.KeyType.Name, s.Interval, s.Constant)
		els, err := f.conn.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("firewall: listing set %s: %w", s.Name, err)
		}
		lines := make([]string, 0, len(els))
		for _, e := range els {
			lines = append(lines, fmt.Sprintf("  element %s end %v", hex.EncodeToString(e.Key), e.IntervalEnd))
		}
		slices.Sort(lines)
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	return b.Bytes(), nil
}

// renderExpr writes an expression with its fields, leaving out what the
// kernel assigns or counts.
func renderExpr(e expr.Any) string {
	switch x := e.(type) {
	case *expr.Counter:
		return "counter"
	case *expr.Lookup:
		return fmt.Sprintf("lookup{set:%s src:%d dst:%d isdst:%v invert:%v}", x.SetName, x.SourceRegister, x.DestRegister, x.IsDestRegSet, x.Invert)
	case *expr.Limit:
		return fmt.Sprintf("limit{type:%d rate:%d unit:%d burst:%d over:%v}", x.Type, x.Rate, x.Unit, x.Burst, x.Over)
	}
	return fmt.Sprintf("%T%+v", e, e)
}
