package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/bulwarkvm/bulwark/internal/firewall"
)

// applyFirewall installs the whole policy (default deny in and out, the
// configured openings) in one transaction, before any interface is up:
// there is never an open moment. A node that cannot apply it halts.
func applyFirewall(b *boot) (string, error) {
	p, err := firewall.FromConfig(b.cfg)
	if err != nil {
		return "", err
	}
	if up := upInterfaces(); len(up) > 0 {
		return "", fmt.Errorf("firewall: interfaces %s are already up before the firewall; refusing to continue", strings.Join(up, ", "))
	}
	fw, err := firewall.Open(-1)
	if err != nil {
		return "", err
	}
	if err := fw.Apply(p); err != nil {
		return "", err
	}
	b.fw = fw
	lines := p.Summary()
	for _, l := range lines {
		b.notes = append(b.notes, "firewall: "+l)
	}
	if p.Clients.Len() == 0 {
		return lines[0], warning{"the client allowlist is empty: no client can connect"}
	}
	return fmt.Sprintf("table inet bulwark; clients %d ranges, peers %d, management %d", p.Clients.Len(), p.Peers.Len(), p.Management.Len()), nil
}

// upInterfaces lists the interfaces other than lo that are up.
func upInterfaces() []string {
	entries, _ := os.ReadDir("/sys/class/net")
	var up []string
	for _, e := range entries {
		if e.Name() == "lo" {
			continue
		}
		b, err := os.ReadFile("/sys/class/net/" + e.Name() + "/flags")
		if err != nil {
			continue
		}
		var flags uint64
		fmt.Sscanf(strings.TrimSpace(string(b)), "0x%x", &flags)
		if flags&1 != 0 { // IFF_UP
			up = append(up, e.Name())
		}
	}
	return up
}
