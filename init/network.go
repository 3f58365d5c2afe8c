package main

import (
	"context"

	"github.com/bulwarkvm/bulwark/internal/network"
)

// configureNetwork brings up the configured interfaces. The firewall's
// default deny is installed before this stage (firewall issue).
func configureNetwork(b *boot) (string, error) {
	return network.Apply(context.Background(), b.log, b.cfg.Hostname, b.cfg.Network)
}
