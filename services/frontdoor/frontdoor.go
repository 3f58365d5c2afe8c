// Package frontdoor is the front door's own process: it terminates TLS on
// the client ports with the node's certificate and proxies the decrypted
// stream to the workload on loopback. PID1 starts it (the init binary
// started with the role "frontdoor", see init/services.go) as its own
// uid, with no capabilities: PID1 binds the listening sockets and passes
// them in, then hands over the certificate and the settings through the
// control socket (internal/control). The process then confines itself
// (internal/sandbox: no files at all, a seccomp filter) before it accepts
// a single connection. It holds the node's TLS key and nothing else of
// the node's secrets.
package frontdoor

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/bulwarkvm/bulwark/internal/control"
	door "github.com/bulwarkvm/bulwark/internal/frontdoor"
	"github.com/bulwarkvm/bulwark/internal/safego"
	"github.com/bulwarkvm/bulwark/internal/sandbox"
	"github.com/bulwarkvm/bulwark/services/service"
)

// Door is one front door's settings, as PID1 sends them.
type Door struct {
	Port         int    `json:"port"`
	Protocol     string `json:"protocol"`
	Backend      string `json:"backend"`
	MaxPerSource int    `json:"max_per_source,omitempty"`
	MaxConns     int    `json:"max_connections,omitempty"`
	IdleSeconds  int    `json:"idle_timeout_seconds,omitempty"`
}

// Config is the answer to OpConfig.
type Config struct {
	Doors []Door `json:"doors"`
	// CertPEM and KeyPEM are the node's certificate chain and key.
	CertPEM []byte `json:"cert_pem"`
	KeyPEM  []byte `json:"key_pem"`
}

// Operations on the control socket.
const (
	// OpConfig: the front door asks PID1 for its Config (no arguments).
	OpConfig = "frontdoor.config"
	// OpStats: PID1 asks the front door for its counters ([]DoorStats).
	OpStats = "frontdoor.stats"
)

// DoorStats is one door's counters.
type DoorStats struct {
	Port int `json:"port"`
	door.Stats
}

// Syscalls are what the front door calls beyond the Go runtime's.
var Syscalls = []string{"accept4", "socket", "connect", "bind", "getsockopt", "setsockopt"}

// Main runs the front door; ctl is the control socket (descriptor 3) and
// listeners the listening sockets, one per door, in PID1's order.
func Main(ctl *os.File, listeners []*os.File) int {
	var mu sync.Mutex
	var servers []*door.Server
	var ports []int
	handlers := map[string]control.Handler{
		OpStats: func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
			mu.Lock()
			defer mu.Unlock()
			out := []DoorStats{}
			for i, s := range servers {
				out = append(out, DoorStats{Port: ports[i], Stats: s.Stats()})
			}
			return out, nil, nil
		},
	}
	var cfg Config
	proc, err := service.Start(ctl, handlers, OpConfig, &cfg)
	if err != nil {
		return 1
	}
	log := proc.Log
	cert, err := tls.X509KeyPair(cfg.CertPEM, cfg.KeyPEM)
	clear(cfg.KeyPEM)
	if err != nil {
		log.Error("the node's certificate", "err", err)
		return 1
	}
	if len(cfg.Doors) != len(listeners) {
		log.Error(fmt.Sprintf("%d doors configured, %d listening sockets given", len(cfg.Doors), len(listeners)))
		return 1
	}
	var lns []net.Listener
	for i, f := range listeners {
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			log.Error("listening socket", "door", cfg.Doors[i].Port, "err", err)
			return 1
		}
		lns = append(lns, ln)
	}
	// From here on nothing but the sockets it has and the connections it
	// makes to the workload: no file may be opened.
	rep, err := proc.Confine(sandbox.Policy{Syscalls: Syscalls})
	if err != nil {
		return 1
	}
	// The doors share the process's descriptors: each gets its part of
	// the budget, and no more than it asked for.
	share := max(1, door.FDBudget()/max(1, len(cfg.Doors)))
	for i, d := range cfg.Doors {
		limit := d.MaxConns
		if limit == 0 {
			limit = door.DefaultMaxConns
		}
		d.MaxConns = min(limit, share)
		s, err := door.Listen(door.Options{
			Listener: lns[i], Protocol: d.Protocol, Backend: d.Backend,
			TLS:          &tls.Config{Certificates: []tls.Certificate{cert}},
			MaxPerSource: d.MaxPerSource, MaxConns: d.MaxConns,
			IdleTimeout: time.Duration(d.IdleSeconds) * time.Second, Log: log,
		})
		if err != nil {
			log.Error("front door", "port", d.Port, "err", err)
			return 1
		}
		mu.Lock()
		servers, ports = append(servers, s), append(ports, d.Port)
		mu.Unlock()
		safego.Go(fmt.Sprintf("front door %d", d.Port), func() {
			if err := s.Serve(); err != nil {
				log.Error("front door stopped", "port", d.Port, "err", err)
				os.Exit(1) // PID1 restarts the process
			}
		})
		log.Info("serving", "port", d.Port, "protocol", d.Protocol, "backend", d.Backend)
	}
	if proc.Ready(rep) != nil {
		return 1
	}
	proc.Wait()
	return 0
}
