package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/bulwarkvm/bulwark/internal/bootlog"
	"github.com/bulwarkvm/bulwark/internal/proc"
)

// workloadStopTimeout is how long the workload gets to stop after SIGTERM
// before it is killed; the volumes are erased only after it is gone.
const workloadStopTimeout = 20 * time.Second

// startWorkload hands the data volumes to the workload's user and starts
// it. Its output goes to the console, prefixed "workload: ", one line per
// line (long ones cut, control characters escaped). It is not
// restarted when it exits: its exit is logged, and the node stays up so
// that its state can be inspected through the console.
func startWorkload(b *boot) (string, error) {
	w := b.cfg.Workload
	if w == nil {
		return "none configured", nil
	}
	for _, v := range b.cfg.Volumes {
		if err := os.Chown(v.Mount, w.UID, w.GID); err != nil {
			return "", fmt.Errorf("workload: giving %s to uid %d: %w", v.Mount, w.UID, err)
		}
	}
	// The workload's group may open unprivileged ICMP echo sockets
	// ("ping" without raw sockets or capabilities), for health checks of
	// its peers.
	if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte(fmt.Sprintf("%d %d\n", w.GID, w.GID)), 0); err != nil {
		return "", fmt.Errorf("workload: ping_group_range: %w", err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return "", fmt.Errorf("workload: %w", err)
	}
	p, err := proc.Start(proc.Spec{Argv: w.Command, UID: uint32(w.UID), GID: uint32(w.GID), Dir: "/", Stdout: pw})
	pw.Close()
	if err != nil {
		pr.Close()
		return "", fmt.Errorf("workload: %w", err)
	}
	// CopyLines never stops reading while the workload holds the pipe,
	// and never makes it wait on the console: a line of any length is cut
	// into pieces, and what a slow console cannot take is dropped and
	// counted (docs/boot.md). The handler escapes the text, so the
	// workload cannot print a line of the init's.
	b.goSafe("workload output", func() {
		if err := bootlog.CopyLines(pr, bootlog.MaxLine, func(s string) { b.log.Info("workload: " + s) }); err != nil {
			b.log.Warn("workload: reading its output: " + err.Error())
		}
		pr.Close()
	})
	b.goSafe("workload exit", func() {
		<-p.Done()
		st := p.Status()
		if st.Signaled() {
			b.log.Warn("workload: killed by signal " + st.Signal().String())
		} else if st.ExitStatus() != 0 {
			b.log.Warn(fmt.Sprintf("workload: exited with status %d", st.ExitStatus()))
		} else {
			b.log.Info("workload: exited with status 0")
		}
	})
	// The workload's share of the teardown: its stop timeout, then the
	// time a SIGKILL takes.
	b.onShutdownWithin("stop workload", workloadStopTimeout+2*time.Second, false, func(ctx context.Context) error {
		p.Signal(syscall.SIGTERM)
		t := time.NewTimer(workloadStopTimeout)
		defer t.Stop()
		select {
		case <-p.Done():
			return nil
		case <-t.C:
		case <-ctx.Done():
		}
		signalGroup(p, syscall.SIGKILL)
		select {
		case <-p.Done():
		case <-ctx.Done():
		}
		return fmt.Errorf("the workload did not stop on SIGTERM within its share; killed: %w", errCutShort)
	})
	return fmt.Sprintf("pid %d, uid %d: %s", p.Pid(), w.UID, strings.Join(w.Command, " ")), nil
}
