package main

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/backup"
	"github.com/bulwarkvm/bulwark/internal/bootlog"
	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/mgmt"
	"github.com/bulwarkvm/bulwark/internal/objstore"
	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/internal/proc"
	"github.com/bulwarkvm/bulwark/internal/safego"
)

// startBackups sets up the backup encryptor: the service's public key (the
// private key never enters the node), the object store, which must be in
// the node's region, a staging directory on the first data volume, and the
// schedule. A bucket in another region is fatal; a store that cannot be
// reached yet is a warning, and every run tries again.
func startBackups(b *boot) (string, error) {
	s := b.cfg.Backup
	if s == nil {
		return "not configured", nil
	}
	pub, err := backup.ParsePublicKey([]byte(s.PublicKey))
	if err != nil {
		return "", err
	}
	keyID, err := backup.IDOf(pub)
	if err != nil {
		return "", err
	}
	staging := filepath.Join(b.cfg.Volumes[0].Mount, ".bulwark", "backup-staging")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return "", fmt.Errorf("backup: staging directory: %w", err)
	}
	r := &backups{b: b, cfg: s, pub: pub, staging: staging}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	b.backups = r
	detail := fmt.Sprintf("%d sources, key %s…, region %s", len(s.Sources), keyID.String()[:16], s.Region)
	ctx, cancel := context.WithTimeout(r.ctx, 20*time.Second)
	st, err := r.store(ctx)
	cancel()
	var re *objstore.RegionError
	switch {
	case errors.As(err, &re):
		return "", err
	case err != nil:
		b.log.Warn("backup store not reachable yet; each run tries again", "err", err)
		detail += "; store not reachable yet"
	default:
		detail += "; " + st.String()
	}
	if s.IntervalSeconds > 0 {
		every := time.Duration(s.IntervalSeconds) * time.Second
		detail += fmt.Sprintf(", every %s", every)
		b.goSafe("backup schedule", func() {
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-r.ctx.Done():
					return
				case <-t.C:
					r.start("schedule")
				}
			}
		})
	} else {
		detail += ", on request"
	}
	if s.FinalOnShutdown {
		// The volumes stage registered "close audit log" after the
		// volumes' erasure; the final round runs just before it, after
		// the workload has stopped and the scheduled rounds with it.
		if err := b.onShutdownBefore("close audit log", "final backup", finalBackupTimeout, r.final); err != nil {
			return "", fmt.Errorf("backup: %w", err)
		}
		detail += ", a final round at shutdown"
	}
	// A running round ends with its context: its command gets SIGTERM,
	// and SIGKILL after commandStopGrace.
	b.onShutdownWithin("stop backups", commandStopGrace+5*time.Second, false, func(ctx context.Context) error {
		r.cancel()
		idle := make(chan struct{})
		safego.Go("stop backups wait", func() { r.wg.Wait(); close(idle) })
		select {
		case <-idle:
		case <-ctx.Done():
			return fmt.Errorf("a backup round was still running: %w", errCutShort)
		}
		if r.killed.Load() {
			return fmt.Errorf("a backup command ignored SIGTERM and was killed: %w", errCutShort)
		}
		return nil
	})
	if err != nil {
		return "", warning{detail}
	}
	return detail, nil
}

// backups runs backup rounds, one at a time.
type backups struct {
	b       *boot
	cfg     *config.Backup
	pub     *rsa.PublicKey
	staging string
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	// killed is set when a command had to be killed at a round's end.
	killed atomic.Bool

	mu      sync.Mutex
	st      objstore.Store
	running bool
	last    []string // the last round's results, one line per source
	lastAt  time.Time
}

// store returns the object store, connecting (and checking the region)
// the first time it succeeds. The lock is not held while connecting, so
// status and requests are answered meanwhile; only rounds connect, one at
// a time, besides the boot's first try.
func (r *backups) store(ctx context.Context) (objstore.Store, error) {
	r.mu.Lock()
	st := r.st
	r.mu.Unlock()
	if st != nil {
		return st, nil
	}
	var err error
	if d := r.cfg.Store.Dir; d != "" {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		st, err = objstore.NewDir(d)
	} else {
		c := r.cfg.Store.S3
		var roots *x509.CertPool
		if c.CA != "" {
			if roots, err = pki.ParsePool([]byte(c.CA)); err != nil {
				return nil, err // validated with the config; not reached
			}
		}
		st, err = objstore.NewS3(ctx, objstore.S3Options{
			Endpoint: c.Endpoint, AllowHTTP: c.AllowHTTP, Bucket: c.Bucket, Prefix: c.Prefix,
			Region: r.cfg.Region, AccessKey: c.AccessKey, SecretKey: c.SecretKey, RootCAs: roots,
		})
	}
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.st = st
	r.mu.Unlock()
	return st, nil
}

var errBackupRunning = errors.New("a backup is already running")

// start begins a round in the background unless one is running.
func (r *backups) start(why string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running {
		return errBackupRunning
	}
	if r.ctx.Err() != nil {
		return errors.New("the node is shutting down")
	}
	r.running = true
	r.wg.Add(1)
	// The round reads what the bucket (and whoever is on the path to it)
	// sends: a panic in it is a failed round, reported and audited, never
	// the node's shutdown.
	safego.Go("backup", func() {
		defer r.wg.Done()
		lines, _ := r.safeRound(r.ctx, why)
		r.mu.Lock()
		r.running, r.last, r.lastAt = false, lines, time.Now()
		r.mu.Unlock()
	})
	return nil
}

// testHookRound, when set (tests), runs at the start of every round.
var testHookRound func()

// safeRound is round with a panic turned into a failed round.
func (r *backups) safeRound(ctx context.Context, why string) (lines []string, failed int) {
	err := safego.Call("backup round", func() error {
		lines, failed = r.round(ctx, why)
		return nil
	})
	if err != nil {
		line := "round: " + err.Error()
		r.b.log.Error("backup round failed", "err", err)
		r.b.audit.Append(audit.KindBackup, why, "", line, "failed")
		return append(lines, line), len(r.cfg.Sources)
	}
	return lines, failed
}

// finalBackupTimeout bounds the final round within the teardown's limit,
// so that the steps after it (closing the audit log, erasing the volumes)
// keep their time.
const finalBackupTimeout = 30 * time.Second

// final is the teardown step of a final round: the workload has stopped,
// so its files are at rest, and the volumes are not erased yet. A source
// that is not backed up in time fails the step, so the node does not
// report a clean power-off; the volumes are erased all the same.
func (r *backups) final(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, finalBackupTimeout)
	defer cancel()
	lines, failed := r.safeRound(ctx, "shutdown")
	if failed > 0 {
		return fmt.Errorf("%d of %d sources not backed up: %s", failed, len(r.cfg.Sources), strings.Join(lines, "; "))
	}
	return nil
}

// round backs up every source in order; a failed source does not stop the
// others. It returns one line per source and how many failed.
func (r *backups) round(ctx context.Context, why string) (lines []string, failed int) {
	if testHookRound != nil {
		testHookRound()
	}
	r.b.log.Info("backup round started", "why", why)
	st, err := r.store(ctx)
	if err != nil {
		line := "store: " + err.Error()
		r.b.log.Error("backup round failed", "err", err)
		r.b.audit.Append(audit.KindBackup, why, "", line, "failed")
		return []string{line}, len(r.cfg.Sources)
	}
	o := backup.Options{
		Public: r.pub, Store: st, Node: r.b.cfg.Hostname, Region: r.cfg.Region,
		SegmentSize: int64(r.cfg.EffectiveSegmentMiB()) << 20, Staging: r.staging,
	}
	for _, src := range r.cfg.Sources {
		start := time.Now()
		what, err := r.source(ctx, src, o)
		result := "ok"
		if err != nil {
			result = "failed"
			failed++
			what = fmt.Sprintf("%s %s: %v", src.Kind, src.Path+strings.Join(src.Command, " "), err)
			r.b.log.Error("backup failed", "source", src.Kind, "err", err)
		} else {
			what = fmt.Sprintf("%s in %s", what, time.Since(start).Round(time.Millisecond))
			r.b.log.Info("backup " + what)
		}
		r.b.audit.Append(audit.KindBackup, why, "", what, result)
		lines = append(lines, what)
	}
	if n, err := backup.Prune(ctx, st, r.b.cfg.Hostname, ""); err == nil && n > 0 {
		r.b.log.Info(fmt.Sprintf("backup: removed %d objects of incomplete backups", n))
	}
	return lines, failed
}

func (r *backups) source(ctx context.Context, src config.BackupSource, o backup.Options) (string, error) {
	var in io.ReadCloser
	switch src.Kind {
	case "spool":
		res, err := backup.UploadSpool(ctx, src.Path, o)
		what := fmt.Sprintf("spool %s: %d files stored, %d left", src.Path, len(res.Uploaded), len(res.Left))
		return what, err
	case "tree":
		o.Source = backup.Source{Kind: "tree", Name: src.Path}
		// The node's own directory (staging, the audit log) is never
		// part of a backup of the volume it lies on.
		in = backup.Tree(src.Path, filepath.Dir(r.staging))
	default:
		o.Source = backup.Source{Kind: "command", Name: strings.Join(src.Command, " ")}
		var err error
		if in, err = r.command(ctx, src.Command); err != nil {
			return "", err
		}
	}
	defer in.Close()
	m, err := backup.Write(ctx, in, o)
	if err != nil {
		return "", err
	}
	return describe(m), nil
}

// command starts a command source as the workload's user; its standard
// output goes into the backup, its standard error to the console through
// the init's log, prefixed "backup command: " and escaped like the
// workload's output, so that it cannot print lines of the init's (it runs
// as the workload's user and reads the workload's data). If the backup
// stops early, closing the stream closes the pipe, and the command ends on
// its next write.
func (r *backups) command(ctx context.Context, argv []string) (io.ReadCloser, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	epr, epw, err := os.Pipe()
	if err != nil {
		pr.Close()
		pw.Close()
		return nil, err
	}
	w := r.b.cfg.Workload
	p, err := proc.Start(proc.Spec{Argv: argv, UID: uint32(w.UID), GID: uint32(w.GID), Dir: "/", Stdout: pw, Stderr: epw})
	pw.Close()
	epw.Close()
	if err != nil {
		pr.Close()
		epr.Close()
		return nil, err
	}
	r.b.goSafe("backup command stderr", func() {
		if err := bootlog.CopyLines(epr, bootlog.MaxLine, func(s string) { r.b.log.Info("backup command: " + s) }); err != nil {
			r.b.log.Warn("backup command: reading its standard error: " + err.Error())
		}
		epr.Close()
	})
	// The round's end (its context: the teardown's share, the final
	// round's bound) ends the command too, and so does closing the stream
	// early; a command that ignores SIGTERM is killed after a grace, with
	// everything it started (its session is its process group).
	stopped := make(chan struct{})
	var once sync.Once
	stop := func() {
		once.Do(func() {
			defer close(stopped)
			signalGroup(p, syscall.SIGTERM)
			select {
			case <-p.Done():
			case <-time.After(commandStopGrace):
				r.b.log.Warn("backup command: did not stop on SIGTERM; killed", "command", argv[0], "after", commandStopGrace)
				r.killed.Store(true)
				signalGroup(p, syscall.SIGKILL)
			}
		})
	}
	r.b.goSafe("backup command watch", func() {
		select {
		case <-ctx.Done():
			stop()
		case <-p.Done():
		}
	})
	return &commandStream{ReadCloser: backup.Checked(pr, func() error {
		<-p.Done()
		if st := p.Status(); st.Signaled() || st.ExitStatus() != 0 {
			return fmt.Errorf("%s: exit status %d (signal %d)", argv[0], st.ExitStatus(), st.Signal())
		}
		return nil
	}), p: p, stop: stop}, nil
}

// commandStopGrace is how long a backup command gets between SIGTERM and
// SIGKILL when its round ends early.
const commandStopGrace = 5 * time.Second

// commandStream is a command source's output. Closing it before the
// command has exited stops the command, so that the close never waits on
// a command that neither writes nor exits.
type commandStream struct {
	io.ReadCloser
	p    *proc.Process
	stop func()
}

func (c *commandStream) Close() error {
	select {
	case <-c.p.Done():
	default:
		safego.Go("backup command stop", c.stop)
	}
	return c.ReadCloser.Close()
}

// signalGroup signals the process group a child leads (proc.Start puts
// each child in a session of its own), reaching what it started too.
func signalGroup(p *proc.Process, sig syscall.Signal) {
	if err := unix.Kill(-p.Pid(), sig); err != nil {
		p.Signal(sig) // the leader alone, if the group is gone
	}
}

func describe(m *backup.Manifest) string {
	return fmt.Sprintf("%s %s complete: %s %s, %d bytes, %d segments", m.BackupID, m.Region, m.Source.Kind, m.Source.Name, m.PlaintextBytes, len(m.Segments))
}

// Backup starts a round now (POST /v1/backup).
func (b *boot) Backup() error {
	if b.backups == nil {
		return fmt.Errorf("backups are not configured on this node: %w", mgmt.ErrNotAvailable)
	}
	if err := b.backups.start("management API"); err != nil {
		if errors.Is(err, errBackupRunning) {
			return fmt.Errorf("%w: %w", mgmt.ErrBusy, err)
		}
		return err
	}
	return nil
}

// backupStatus is the status line for backups.
func (b *boot) backupStatus() string {
	r := b.backups
	if r == nil {
		return "not configured"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var s strings.Builder
	if r.running {
		s.WriteString("running; ")
	}
	if r.lastAt.IsZero() {
		s.WriteString("no round yet")
	} else {
		fmt.Fprintf(&s, "last round %s: %s", r.lastAt.UTC().Format(time.RFC3339), strings.Join(r.last, "; "))
	}
	return s.String()
}
