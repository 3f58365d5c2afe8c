// Package service is what every service process of the node does the
// same way: its log on standard error in the console's format (which
// PID1 relays, escaped, under the service's name), its
// panic reporter, its control socket to PID1, the configuration it asks
// PID1 for at start, and telling PID1 it is confined and ready.
package service

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/bulwarkvm/bulwark/internal/bootlog"
	"github.com/bulwarkvm/bulwark/internal/control"
	"github.com/bulwarkvm/bulwark/internal/safego"
	"github.com/bulwarkvm/bulwark/internal/sandbox"
)

// startTimeout bounds each of the start-up requests to PID1.
const startTimeout = 10 * time.Second

// Process is a running service's link to PID1.
type Process struct {
	Log    *slog.Logger
	Peer   *control.Peer
	served chan error
}

// Start opens the control socket ctl with the operations the service
// answers (plus the test image's hooks) and asks PID1 for configOp's
// answer, decoded into cfg.
func Start(ctl *os.File, handlers map[string]control.Handler, configOp string, cfg any) (*Process, error) {
	// PID1 relays each line under the service's name (bootlog.Relay).
	log := slog.New(bootlog.New(os.Stderr, slog.LevelInfo))
	safego.SetReporter(func(r safego.Report) { log.Error("panic", "in", r.Name, "value", r.Value) })
	if handlers == nil {
		handlers = map[string]control.Handler{}
	}
	addTestHooks(handlers)
	peer, err := control.New(ctl, control.Options{Name: "pid1", Handlers: handlers})
	if err != nil {
		log.Error("control socket", "err", err)
		return nil, err
	}
	p := &Process{Log: log, Peer: peer, served: make(chan error, 1)}
	safego.Go("control", func() { p.served <- peer.Serve(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if _, err := peer.Call(ctx, configOp, nil, cfg); err != nil {
		log.Error("configuration from PID1", "err", err)
		return nil, err
	}
	return p, nil
}

// Confine applies pol to the process (internal/sandbox) and logs what is
// in place, or the error.
func (p *Process) Confine(pol sandbox.Policy) (sandbox.Report, error) {
	rep, err := sandbox.Apply(pol)
	if err != nil {
		p.Log.Error("sandbox", "err", err)
		return rep, err
	}
	p.Log.Info("confined", "landlock", rep.Landlock, "seccomp", rep.Seccomp)
	return rep, nil
}

// Listener is the one listening socket PID1 passed (files), as a
// net.Listener; what names it in errors.
func Listener(files []*os.File, what string) (net.Listener, error) {
	if len(files) != 1 {
		return nil, fmt.Errorf("%d descriptors given, want the %s", len(files), what)
	}
	ln, err := net.FileListener(files[0])
	files[0].Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ln, nil
}

// Ready tells PID1 the service is confined (rep) and serving.
func (p *Process) Ready(rep sandbox.Report) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if _, err := p.Peer.Call(ctx, control.OpReady, rep, nil); err != nil {
		p.Log.Error("telling PID1 the service is ready", "err", err)
		return fmt.Errorf("ready: %w", err)
	}
	return nil
}

// Wait returns when the control socket ends: PID1 closing it (or dying)
// ends the service.
func (p *Process) Wait() { <-p.served }
