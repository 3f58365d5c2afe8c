package main

import (
	"crypto/tls"
	"fmt"
	"time"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

// readConfig reads and validates the whole config before anything acts on
// it: an invalid document halts the node with nothing formatted and no
// service started.
func readConfig(b *boot) (string, error) {
	doc, src, err := config.Locate(5*time.Second, "/sys", "/dev", "/run/bulwark/config-volume", b.loadOnDemand)
	if err != nil {
		return "", err
	}
	cfg, err := config.Parse(doc)
	if err != nil {
		return "", err
	}
	b.cfg, b.cfgSource, b.cfgDigest = cfg, src, config.Digest(doc)
	// The document may hold the node's TLS key; the parsed copy is all
	// the node keeps.
	clear(doc)
	b.log.Info("config accepted", "source", src.String(), "sha256", b.cfgDigest, "hostname", cfg.Hostname)
	b.audit.Append(audit.KindConfig, "", "", "config from "+src.String()+" sha256:"+b.cfgDigest, "accepted")
	if t := cfg.TLS; t != nil {
		// The node's identity, for the front door, the management API
		// and IPsec keying (validated with the rest of the config).
		if b.nodeCert, err = tls.X509KeyPair([]byte(t.Certificate), []byte(t.Key)); err != nil {
			return "", fmt.Errorf("config: tls: the node certificate: %w", err)
		}
		if b.projectCA, err = pki.ParseCertificate([]byte(t.CA)); err != nil {
			return "", fmt.Errorf("config: tls: %w", err)
		}
	}
	return fmt.Sprintf("%s sha256:%s", src, b.cfgDigest[:16]), nil
}
