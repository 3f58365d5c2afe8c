package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/bulwarkvm/bulwark/internal/firewall"
	"github.com/bulwarkvm/bulwark/internal/frontdoor"
	"github.com/bulwarkvm/bulwark/internal/mgmt"
	fdsvc "github.com/bulwarkvm/bulwark/services/frontdoor"
	ksvc "github.com/bulwarkvm/bulwark/services/keying"
)

// startServices starts the TLS front door on each configured client port
// and the management API (mutual TLS) on the management port, each as a
// supervised process of its own. Without a tls section neither runs: no
// client port ever speaks plaintext.
func startServices(b *boot) (string, error) {
	if b.cfg.TLS == nil {
		return "no tls section: no front door, no management API", nil
	}
	ca := b.projectCA
	var parts []string
	if len(b.cfg.FrontDoor) > 0 {
		detail, err := b.startFrontDoor()
		if err != nil {
			return "", err
		}
		parts = append(parts, detail)
	}
	port := b.cfg.Firewall.EffectiveManagementPort()
	m, err := b.startManagement(port)
	if err != nil {
		return "", err
	}
	parts = append(parts, fmt.Sprintf("management API %d (mTLS, project CA %s; process %d, uid %d)", port, ca.Subject.CommonName, m.status().Pid, mgmtUID))
	return strings.Join(parts, "; "), nil
}

// The management API acts on the node through these methods.

// Status is what GET /v1/status returns.
func (b *boot) Status() any {
	type stage struct {
		Name   string  `json:"name"`
		Result string  `json:"result"`
		Millis float64 `json:"ms"`
		Detail string  `json:"detail"`
	}
	type frontDoor struct {
		Port     int    `json:"port"`
		Protocol string `json:"protocol"`
		frontdoor.Stats
	}
	type svc = serviceStatus
	st := struct {
		Hostname   string      `json:"hostname"`
		Config     string      `json:"config_sha256"`
		Uptime     string      `json:"uptime"`
		Stages     []stage     `json:"stages"`
		Firewall   []string    `json:"firewall"`
		Volumes    []string    `json:"volumes"`
		FrontDoors []frontDoor `json:"front_doors"`
		Services   []svc       `json:"services"`
		IPsec      any         `json:"ipsec"`
		Backups    string      `json:"backups"`
		TPM        string      `json:"tpm"`
		AuditHead  string      `json:"audit_head"`
		AuditCount uint64      `json:"audit_records"`
		AuditFile  string      `json:"audit_file"`
	}{
		Hostname: b.cfg.Hostname,
		Config:   b.cfgDigest,
		Uptime:   time.Since(b.start).Round(time.Second).String(),
		IPsec:    "not configured on this node",
		Backups:  b.backupStatus(),
		TPM:      b.tpmStatus(),
	}
	for _, r := range b.results {
		st.Stages = append(st.Stages, stage{r.name, r.status, float64(r.duration.Microseconds()) / 1000, r.detail})
	}
	if b.fw != nil {
		st.Firewall = b.fw.Policy().Summary()
	}
	for _, v := range b.volumes {
		st.Volumes = append(st.Volumes, v.Summary())
	}
	for _, s := range b.services {
		st.Services = append(st.Services, s.status())
	}
	if b.frontDoor != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var stats []fdsvc.DoorStats
		err := b.frontDoor.call(ctx, fdsvc.OpStats, nil, &stats)
		cancel()
		for _, fd := range b.cfg.FrontDoor {
			d := frontDoor{Port: fd.Port, Protocol: fd.Protocol}
			for _, s := range stats {
				if s.Port == fd.Port {
					d.Stats = s.Stats
				}
			}
			if err != nil {
				d.Protocol += " (no answer from the front door: " + err.Error() + ")"
			}
			st.FrontDoors = append(st.FrontDoors, d)
		}
	}
	if b.keying != nil {
		st.IPsec = b.ipsecStatus()
	}
	st.AuditHead, st.AuditCount = b.audit.Head()
	st.AuditFile = b.auditFile
	if st.AuditFile == "" {
		st.AuditFile = "memory only (no data volume)"
	}
	return st
}

// Allowlist is the client allowlist in force, as merged ranges.
func (b *boot) Allowlist() []string {
	if b.fw == nil {
		return nil
	}
	l := b.fw.Policy().Clients
	if l.Len() == 0 {
		return []string{}
	}
	return strings.Split(l.String(), ", ")
}

// SetAllowlist replaces the client allowlist atomically.
func (b *boot) SetAllowlist(entries []string) (string, error) {
	if b.fw == nil {
		return "", fmt.Errorf("no firewall")
	}
	w, err := b.fw.Replace(firewall.SetClients, entries)
	if err == nil {
		b.log.Info("firewall: client allowlist replaced", "clients", strings.Join(b.Allowlist(), ", "))
		if w != "" {
			b.log.Warn("firewall: " + w)
		}
	}
	return w, err
}

// Backup is not available until the backup encryptor exists.

// Rekey forces a new key generation with every IPsec peer.
func (b *boot) Rekey() error {
	if b.keying == nil {
		return fmt.Errorf("IPsec is not configured on this node: %w", mgmt.ErrNotAvailable)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return b.keying.call(ctx, ksvc.OpRekey, nil, nil)
}

// Shutdown starts the shutdown (which always crypto-erases the volumes).
func (b *boot) Shutdown(reason string) { b.requestShutdown(reason) }
