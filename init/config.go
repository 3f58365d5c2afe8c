package main

import (
	"fmt"
	"time"

	"github.com/bulwarkvm/bulwark/internal/config"
)

// readConfig reads and validates the whole config before anything acts on
// it: an invalid document halts the node with nothing formatted and no
// service started.
func readConfig(b *boot) (string, error) {
	doc, src, err := config.Locate(5*time.Second, "/sys", "/dev", "/run/bulwark/config-volume")
	if err != nil {
		return "", err
	}
	cfg, err := config.Parse(doc)
	if err != nil {
		return "", err
	}
	b.cfg, b.cfgSource, b.cfgDigest = cfg, src, config.Digest(doc)
	b.log.Info("config accepted", "source", src.String(), "sha256", b.cfgDigest, "hostname", cfg.Hostname)
	return fmt.Sprintf("%s sha256:%s", src, b.cfgDigest[:16]), nil
}
