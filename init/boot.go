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
	"github.com/bulwarkvm/bulwark/internal/kmod"
	"github.com/bulwarkvm/bulwark/internal/proc"
	"github.com/bulwarkvm/bulwark/internal/safego"
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
	// services are the supervised processes; frontDoor is one of them.
	services  []*service
	frontDoor *service
	volumes   []*volume.Volume
	keying    *service
	backups   *backups
	// tpm is the node's TPM, nil when it has none.
	tpm *tpm.TPM
	// bgModules carries the result of the background module load
	// (awaitModules).
	bgModules chan error
	// firstModules carries the result of loading the first background
	// modules, the system image's (awaitSystemImageModules).
	firstModules chan error
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
	// Every goroutine of this process recovers from a panic
	// (internal/safego, goSafe): from here on each one is logged and
	// audited, at a bounded rate, before what docs/boot.md says follows.
	b.audit = audit.New(auditEcho(b.log))
	safego.SetReporter(safego.Limited(b.reportPanic))
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

// goSafe runs one of the init's own goroutines; a panic in it is
// reported (reportPanic), then shuts the node down in order instead of
// crashing PID1 (which the kernel would turn into a panic): the init has no
// way to carry on without one of its own goroutines.
func (b *boot) goSafe(name string, fn func()) {
	go func() {
		if err := safego.Call(name, func() error { fn(); return nil }); err != nil {
			b.log.Log(context.Background(), bootlog.LevelFatal, err.Error()+"; shutting down")
			b.requestShutdown("panic in " + name)
		}
	}()
}

// auditKindPanic is the audit records' kind for recovered panics.
const auditKindPanic = "panic"

// reportPanic is the process's panic reporter (safego.SetReporter): an
// ERROR line with the stack, and an audit record of kind "panic", result
// "recovered". What follows is the goroutine's own documented behaviour
// (docs/boot.md): a connection dropped, a loop run again, an error for its
// waiter, or for the init's own goroutines a shutdown.
func (b *boot) reportPanic(r safego.Report) {
	msg := "panic in " + r.Name + ": " + r.Value
	attrs := []any{"stack", r.Stack}
	result := "recovered"
	if r.Restart > 0 {
		attrs = append(attrs, "runs_again_in", r.Restart.String())
	}
	if r.Suppressed > 0 {
		attrs = append(attrs, "unreported_before", r.Suppressed)
		result = fmt.Sprintf("recovered; %d more in %s not recorded before this one", r.Suppressed, r.Name)
	}
	b.log.Error(msg, attrs...)
	if b.audit == nil {
		return
	}
	if _, err := b.audit.Append(auditKindPanic, "", "", msg, result); err != nil {
		b.log.Error("audit: a recovered panic was not recorded", "err", err)
	}
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
