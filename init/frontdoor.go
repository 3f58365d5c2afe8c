package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/bulwarkvm/bulwark/internal/control"
	fdsvc "github.com/bulwarkvm/bulwark/services/frontdoor"
)

// The front door's process: uid and gid of its own, no capabilities.
const frontDoorUID = 61001

// startFrontDoor starts the front door as a supervised process of its
// own. PID1 binds the client ports (so the process needs no capability,
// whatever the port) and passes the listening sockets in, closing its own
// copies: PID1 accepts no connection. On a restart it binds them again.
func (b *boot) startFrontDoor() (string, error) {
	doors := b.cfg.FrontDoor
	s := &service{
		name: "frontdoor", uid: frontDoorUID, gid: frontDoorUID,
		files: func() ([]*os.File, error) {
			var files []*os.File
			for _, d := range doors {
				var lc net.ListenConfig
				ln, err := lc.Listen(context.Background(), "tcp", fmt.Sprintf(":%d", d.Port))
				if err != nil {
					closeFiles(files)
					return nil, fmt.Errorf("front door on port %d: %w", d.Port, err)
				}
				f, err := ln.(*net.TCPListener).File()
				ln.Close()
				if err != nil {
					closeFiles(files)
					return nil, err
				}
				files = append(files, f)
			}
			return files, nil
		},
		handlers: map[string]control.Handler{
			fdsvc.OpConfig: func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
				c := fdsvc.Config{CertPEM: []byte(b.cfg.TLS.Certificate), KeyPEM: []byte(b.cfg.TLS.Key)}
				for _, d := range doors {
					c.Doors = append(c.Doors, fdsvc.Door{Port: d.Port, Protocol: d.Protocol, Backend: d.Backend,
						MaxPerSource: d.MaxPerSource, MaxConns: d.MaxConnections, IdleSeconds: d.IdleTimeoutSeconds})
				}
				return c, nil, nil
			},
		},
	}
	if err := b.supervise(s, 30*time.Second); err != nil {
		return "", fmt.Errorf("services: %w", err)
	}
	b.frontDoor = s
	b.services = append(b.services, s)
	var names []string
	for _, d := range doors {
		names = append(names, fmt.Sprintf("front door %d (%s) -> %s", d.Port, d.Protocol, d.Backend))
	}
	// Stopping the process closes every client connection with it.
	b.onShutdownWithin("stop service frontdoor", 5*time.Second, false, s.stopService)
	b.notes = append(b.notes, s.status().summary())
	return strings.Join(names, "; ") + fmt.Sprintf(" (process %d, uid %d)", s.status().Pid, frontDoorUID), nil
}
