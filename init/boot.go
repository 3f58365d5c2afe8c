package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/bootlog"
	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/firewall"
	"github.com/bulwarkvm/bulwark/internal/ipsec"
	"github.com/bulwarkvm/bulwark/internal/kmod"
	"github.com/bulwarkvm/bulwark/internal/proc"
	"github.com/bulwarkvm/bulwark/internal/tpm"
	"github.com/bulwarkvm/bulwark/internal/volume"
)

// boot is the state the stages share.
type boot struct {
	log     *slog.Logger
	logh    *bootlog.Handler
	start   time.Time
	results []result
	// teardown runs in reverse order on shutdown; later stages (volumes,
	// IPsec, backups) add their steps here.
	teardown []teardownStep
	shutdown chan string
	// notes are extra lines for the readiness report, such as one per
	// data volume.
	notes []string

	cfg       *config.Config
	cfgDigest string
	cfgSource config.Source
	// nodeCert and projectCA come from the config's tls section.
	nodeCert  tls.Certificate
	projectCA *x509.Certificate
	// fw is the firewall, kept for live updates (management API).
	fw *firewall.Firewall
	// audit is the tamper-evident log; auditFile is where it is written
	// once a data volume is mounted.
	audit     *audit.Log
	auditFile string
	doors     []door
	volumes   []*volume.Volume
	ipsec     *ipsec.Manager
	backups   *backups
	// tpm is the node's TPM, nil when it has none.
	tpm *tpm.TPM
	// bgModules carries the result of the background module load
	// (awaitModules).
	bgModules chan error
	// onDemand are the modules only a config volume needs.
	onDemand []kmod.Module
	// modules loads kernel modules, each once, for every stage.
	modules *kmod.Loader
	// gcPercent is the collector's setting to restore once ready.
	gcPercent int
}

// bootGCPercent lets the heap grow to five times its live size during the
// boot instead of twice. The boot allocates about 4 MiB that is garbage at
// once (mostly the background modules, decompressed and handed to the
// kernel), which with the default setting started a collection just before
// ready in two of three traced boots: 20-40 ms of concurrent marking under
// emulation, competing with the stages for the two CPUs.
const bootGCPercent = 400

type result struct {
	name     string
	status   string // ok, warn, failed
	duration time.Duration
	detail   string
}

type teardownStep struct {
	name string
	fn   func(context.Context) error
	// share is the step's time within the teardown's bound (0: the
	// default); essential steps remove keys and keep time reserved.
	share     time.Duration
	essential bool
}

// A stage does one step of the boot. Its detail goes into the readiness
// report; a stage that is degraded but usable returns a warning.
type stageFunc func(b *boot) (detail string, err error)

// warning marks a stage result that is degraded but not fatal.
type warning struct{ msg string }

func (w warning) Error() string { return w.msg }

func newBoot() *boot {
	h := bootlog.New(os.Stdout, slog.LevelInfo)
	b := &boot{
		log:       slog.New(h),
		logh:      h,
		start:     time.Now(),
		shutdown:  make(chan string, 1),
		gcPercent: debug.SetGCPercent(bootGCPercent),
	}
	// Watch signals from the first instant, so that even a node halted
	// by an early failure can be powered off.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGPWR, syscall.SIGINT)
	b.goSafe("signals", func() {
		for s := range sigs {
			b.requestShutdown("signal " + unix.SignalName(s.(syscall.Signal)))
		}
	})
	// Ctrl-Alt-Del becomes SIGINT instead of an immediate reboot.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	proc.StartReaper()
	b.log.Info("starting", "pid", os.Getpid())
	b.audit = audit.New(auditEcho(b.log))
	b.audit.Append(audit.KindBoot, "", "", "init started", "ok")
	return b
}

func (b *boot) requestShutdown(reason string) {
	select {
	case b.shutdown <- reason:
	default: // one is already pending
	}
}

// stage runs one boot stage and records it for the readiness report. A
// failure halts the node; stage does not return then.
func (b *boot) stage(name string, fn stageFunc) {
	t0 := time.Now()
	detail, err := fn(b)
	r := result{name: name, status: "ok", duration: time.Since(t0), detail: detail}
	if w, ok := err.(warning); ok {
		r.status, r.detail = "warn", strings.TrimSpace(detail+" "+w.msg)
		err = nil
	}
	if err != nil {
		r.status, r.detail = "failed", err.Error()
	}
	b.results = append(b.results, r)
	if err != nil {
		// Packages prefix their errors with their name; say the stage once.
		if !strings.HasPrefix(err.Error(), name+": ") {
			err = fmt.Errorf("%s: %w", name, err)
		}
		b.fatal(err)
	}
}

// onShutdown registers a teardown step with the default share of the
// teardown's bound (shutdown.go).
func (b *boot) onShutdown(name string, fn func(context.Context) error) {
	b.teardown = append(b.teardown, teardownStep{name: name, fn: fn})
}

// onShutdownWithin registers a teardown step with its own share of the
// bound; essential steps (those that remove keys) run even when the bound
// is spent, with time kept back for them.
func (b *boot) onShutdownWithin(name string, share time.Duration, essential bool, fn func(context.Context) error) {
	b.teardown = append(b.teardown, teardownStep{name: name, fn: fn, share: share, essential: essential})
}

// onShutdownBefore registers a teardown step that runs just before the
// step named before, which an earlier stage registered, and so after every
// step registered since then.
func (b *boot) onShutdownBefore(before, name string, share time.Duration, fn func(context.Context) error) error {
	for i, s := range b.teardown {
		if s.name == before {
			b.teardown = slices.Insert(b.teardown, i+1, teardownStep{name: name, fn: fn, share: share})
			return nil
		}
	}
	return fmt.Errorf("no teardown step %q for %q to run before", before, name)
}

// goSafe runs fn in a goroutine; a panic in it halts the node instead of
// crashing PID1 (which the kernel would turn into a panic).
func (b *boot) goSafe(name string, fn func()) {
	go func() {
		defer func() {
			if r := recover(); r != nil {
				b.log.Log(context.Background(), bootlog.LevelFatal, fmt.Sprintf("panic in %s: %v", name, r), "stack", string(debug.Stack()))
				b.requestShutdown("panic in " + name)
			}
		}()
		fn()
	}()
}

func (b *boot) recoverPanic() {
	if r := recover(); r != nil {
		b.fatal(fmt.Errorf("panic: %v\n%s", r, debug.Stack()))
	}
}

// ready prints the readiness report and the contract line.
func (b *boot) ready() {
	b.report()
	b.audit.Append(audit.KindBoot, "", "", "ready", "ok")
	b.log.Info("ready")
	debug.SetGCPercent(b.gcPercent)
}

func (b *boot) report() {
	b.log.Info(fmt.Sprintf("readiness report (%s since the init started)", round(time.Since(b.start))))
	b.log.Info(fmt.Sprintf("  %-13s %-7s %9s  %s", "stage", "result", "time", "detail"))
	for _, r := range b.results {
		b.log.Info(fmt.Sprintf("  %-13s %-7s %9s  %s", r.name, r.status, round(r.duration), r.detail))
	}
	for _, n := range b.notes {
		b.log.Info("  " + n)
	}
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
