package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	"github.com/bulwarkvm/bulwark/internal/control"
	"github.com/bulwarkvm/bulwark/internal/mgmt"
	"github.com/bulwarkvm/bulwark/internal/proc"
	"github.com/bulwarkvm/bulwark/internal/safego"
	bsvc "github.com/bulwarkvm/bulwark/services/backup"
)

// The backup process: uid and gid of its own (config.BackupUID, which the
// config's metadata egress rule names), and CAP_DAC_READ_SEARCH to read
// the workload's files (Landlock keeps it to the sources).
const backupUID = config.BackupUID

// backupProgram is the backup service's own program, on the system image
// (imagebuild.BackupProgram; a test checks they agree).
const backupProgram = "/usr/libexec/bulwark/backup"

// startBackups sets up the backup encryptor as a process of its own
// (the program services/backup/cmd/bulwark-backup on the system image,
// the protocol services/backup): it holds the service's public key (the private key
// never enters the node) and the object-store credentials, and reaches the
// store, which must be in the node's region. PID1 keeps what needs root:
// the staging directory on the first data volume (the process's own),
// starting command sources as the workload's user, removing spool files,
// the audit records, the schedule and the final round at shutdown. A
// bucket in another region is fatal; a store that cannot be reached yet is
// a warning, and every run tries again.
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
	// The workload runs already and owns the volumes: the directories
	// are made and handed to the backup process without following a
	// link it may have planted (ownedDir).
	mount := filepath.Clean(b.cfg.Volumes[0].Mount)
	staging := filepath.Join(mount, ".bulwark", "backup-staging")
	if err := ownedDir(mount, ".bulwark/backup-staging", backupUID); err != nil {
		return "", fmt.Errorf("backup: staging directory: %w", err)
	}
	if d := s.Store.Dir; d != "" {
		m := volumeOf(b.cfg.Volumes, d)
		if m == "" {
			return "", fmt.Errorf("backup: store directory %s is on no data volume", d)
		}
		rel, _ := filepath.Rel(m, filepath.Clean(d))
		if err := ownedDir(m, rel, backupUID); err != nil {
			return "", fmt.Errorf("backup: store directory: %w", err)
		}
	}
	r := &backups{b: b, cfg: s, staging: staging, cmds: map[uint64]*commandStream{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	svc := &service{name: "backup", program: backupProgram, uid: backupUID, gid: backupUID, caps: []uintptr{unix.CAP_DAC_READ_SEARCH},
		handlers: r.handlers(), exited: r.stopCommands}
	if err := b.supervise(svc, 30*time.Second); err != nil {
		return "", fmt.Errorf("backup: %w", err)
	}
	r.svc = svc
	b.backups = r
	b.services = append(b.services, svc)
	detail := fmt.Sprintf("%d sources, key %s…, region %s", len(s.Sources), keyID.String()[:16], s.Region)
	ctx, cancel := context.WithTimeout(r.ctx, 25*time.Second)
	var chk bsvc.Check
	err = svc.call(ctx, bsvc.OpCheck, nil, &chk)
	cancel()
	var warn bool
	switch {
	case err != nil:
		return "", fmt.Errorf("backup: the backup process: %w", err)
	case chk.RegionError != "":
		return "", errors.New(chk.RegionError)
	case chk.Unreachable != "":
		b.log.Warn("backup store not reachable yet; each run tries again", "err", chk.Unreachable)
		detail += "; store not reachable yet"
		warn = true
	default:
		detail += "; " + chk.Detail
	}
	if s.IntervalSeconds > 0 {
		every := time.Duration(s.IntervalSeconds) * time.Second
		detail += fmt.Sprintf(", every %s", every)
		stopped := r.ctx.Done() // the node's: the final round's context is another
		b.goSafe("backup schedule", func() {
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-stopped:
					return
				case <-t.C:
					if err := r.start("schedule"); err != nil {
						b.log.Warn("backup: scheduled round not started", "err", err)
					}
				}
			}
		})
	} else {
		detail += ", on request"
	}
	if s.FinalOnShutdown {
		// The volumes stage registered "close audit log" after the
		// volumes' erasure; the final round runs just before it, after
		// the workload has stopped and the scheduled rounds with it,
		// and the backup process stops after it (steps run last
		// inserted first).
		if err := b.onShutdownBefore("close audit log", "final backup", finalBackupTimeout, r.final); err != nil {
			return "", fmt.Errorf("backup: %w", err)
		}
		detail += ", a final round at shutdown"
	}
	if err := b.onShutdownBefore("close audit log", "stop service backup", 5*time.Second, svc.stopService); err != nil {
		return "", fmt.Errorf("backup: %w", err)
	}
	// A running round ends: the process cancels it, and its command gets
	// SIGTERM, and SIGKILL after commandStopGrace.
	b.onShutdownWithin("stop backups", commandStopGrace+5*time.Second, false, func(ctx context.Context) error {
		r.mu.Lock()
		stop := r.cancel
		r.mu.Unlock()
		stop()
		// A process that is not running has no round to end.
		cerr := svc.call(ctx, bsvc.OpCancel, nil, nil)
		if errors.Is(cerr, errNotRunning) {
			cerr = nil
		}
		idle := make(chan struct{})
		safego.Go("stop backups wait", func() { r.wg.Wait(); close(idle) })
		select {
		case <-idle:
		case <-ctx.Done():
			return fmt.Errorf("a backup command was still running: %w", errCutShort)
		}
		if r.killed.Load() {
			return fmt.Errorf("a backup command ignored SIGTERM and was killed: %w", errCutShort)
		}
		if cerr != nil {
			// Not cut short: the final round still needs the process.
			return fmt.Errorf("the backup process did not end its round: %v", cerr)
		}
		return nil
	})
	b.notes = append(b.notes, svc.status().summary())
	if warn {
		return "", warning{detail}
	}
	return detail, nil
}

// backups is PID1's side of the backup process.
type backups struct {
	b       *boot
	cfg     *config.Backup
	staging string
	svc     *service
	ctx     context.Context // ends at the teardown: commands end with it
	cancel  context.CancelFunc
	wg      sync.WaitGroup // running commands

	// killed is set when a command had to be killed at a round's end.
	killed atomic.Bool

	mu      sync.Mutex
	next    uint64
	cmds    map[uint64]*commandStream // started for the process, until their exit is read
	running int                       // commands not yet exited
}

// Bounds on what the backup process may ask for.
const (
	maxBackupCommands = 4
	maxBackupText     = 4096
)

// handlers are the operations the backup process may ask PID1 for; every
// argument is untrusted.
func (r *backups) handlers() map[string]control.Handler {
	var spools []string
	for _, s := range r.cfg.Sources {
		if s.Kind == "spool" {
			spools = append(spools, s.Path)
		}
	}
	return map[string]control.Handler{
		bsvc.OpConfig: func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
			return bsvc.Config{Node: r.b.cfg.Hostname, Staging: r.staging, ReadOnly: r.sourceVolumes(), Backup: *r.cfg}, nil, nil
		},
		bsvc.OpAudit: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a bsvc.Audit
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			if a.Result != "ok" && a.Result != "failed" {
				return nil, nil, fmt.Errorf("result %q: want ok or failed", a.Result)
			}
			if len(a.Why) > 64 || len(a.What) > maxBackupText {
				return nil, nil, fmt.Errorf("a record of %d and %d bytes: at most 64 and %d", len(a.Why), len(a.What), maxBackupText)
			}
			_, err := r.b.audit.Append(audit.KindBackup, a.Why, "", a.What, a.Result)
			return nil, nil, err
		},
		bsvc.OpCommand: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a bsvc.Command
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			if a.Source < 0 || a.Source >= len(r.cfg.Sources) || r.cfg.Sources[a.Source].Kind != "command" {
				return nil, nil, fmt.Errorf("source %d is not a command source", a.Source)
			}
			r.mu.Lock()
			ctx := r.ctx
			r.mu.Unlock()
			out, cs, err := r.command(ctx, r.cfg.Sources[a.Source].Command)
			if err != nil {
				return nil, nil, err
			}
			r.mu.Lock()
			r.next++
			h := r.next
			r.cmds[h] = cs
			r.forgetExited()
			r.mu.Unlock()
			return bsvc.Command{Handle: h}, []*os.File{out}, nil
		},
		bsvc.OpExit: func(ctx context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a bsvc.Command
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			r.mu.Lock()
			cs := r.cmds[a.Handle]
			r.mu.Unlock()
			if cs == nil {
				return nil, nil, fmt.Errorf("no command with handle %d", a.Handle)
			}
			// Bounded: a command that neither exits nor is stopped must
			// not hold one of the process's requests for ever.
			select {
			case <-cs.p.Done():
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			case <-time.After(3 * time.Minute):
				return nil, nil, fmt.Errorf("command %s has not exited", cs.name)
			}
			r.mu.Lock()
			delete(r.cmds, a.Handle)
			r.mu.Unlock()
			var e bsvc.Exit
			if err := cs.exitErr(); err != nil {
				e.Err = err.Error()
			}
			return e, nil, nil
		},
		bsvc.OpRemove: func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a bsvc.Remove
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			return nil, nil, backup.RemoveSpoolFile(spools, a.Dir, a.Name)
		},
	}
}

// ownedDir makes the directory rel below base (each missing component
// 0700, root's) and gives the last one to uid. Nothing on the way may be
// a symbolic link: base is opened without following one, and each
// component beneath it the same way, so a link the workload planted on
// its volume is refused rather than followed (PID1 would otherwise make
// or chown whatever the link points to).
func ownedDir(base, rel string, uid int) error {
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	fd, err := unix.Openat2(unix.AT_FDCWD, base, how)
	if err != nil {
		return fmt.Errorf("%s: %w (a symbolic link on the path is refused)", base, err)
	}
	how.Resolve |= unix.RESOLVE_BENEATH
	for _, c := range strings.Split(filepath.Clean(rel), "/") {
		if c == "." || c == "" {
			continue
		}
		if err := unix.Mkdirat(fd, c, 0o700); err != nil && err != unix.EEXIST {
			unix.Close(fd)
			return fmt.Errorf("%s: making %s: %w", base, c, err)
		}
		next, err := unix.Openat2(fd, c, how)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("%s/%s: %w (a symbolic link on the path is refused)", base, rel, err)
		}
		fd = next
	}
	defer unix.Close(fd)
	if err := unix.Fchownat(fd, "", uid, uid, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("%s/%s: %w", base, rel, err)
	}
	return nil
}

// volumeOf is the mount point of the data volume that holds p, or "".
func volumeOf(vols []config.Volume, p string) string {
	p = filepath.Clean(p)
	best := ""
	for _, v := range vols {
		m := filepath.Clean(v.Mount)
		if (p == m || strings.HasPrefix(p, m+"/")) && len(m) > len(best) {
			best = m
		}
	}
	return best
}

// sourceVolumes are the mount points of the data volumes that hold the
// sources (the config puts every source path on one).
func (r *backups) sourceVolumes() []string {
	var out []string
	for _, s := range r.cfg.Sources {
		if s.Path == "" {
			continue
		}
		if m := volumeOf(r.b.cfg.Volumes, s.Path); m != "" && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// maxExited bounds the exited commands whose status waits to be read.
const maxExited = 16

// forgetExited drops the oldest exited commands past maxExited (r.mu
// held): a process that never asks for an exit does not grow the table.
func (r *backups) forgetExited() {
	var exited []uint64
	for h, c := range r.cmds {
		select {
		case <-c.p.Done():
			exited = append(exited, h)
		default:
		}
	}
	if len(exited) <= maxExited {
		return
	}
	slices.Sort(exited)
	for _, h := range exited[:len(exited)-maxExited] {
		delete(r.cmds, h)
	}
}

// stopCommands ends the commands started for a backup process that has
// exited: nobody reads their output any more.
func (r *backups) stopCommands() {
	r.mu.Lock()
	var stops []func()
	for _, c := range r.cmds {
		stops = append(stops, c.stop)
	}
	r.mu.Unlock()
	for _, stop := range stops {
		safego.Go("backup command stop", stop)
	}
}

// start asks the backup process for a round in the background.
func (r *backups) start(why string) error {
	r.mu.Lock()
	rctx := r.ctx
	r.mu.Unlock()
	if rctx.Err() != nil {
		return errors.New("the node is shutting down")
	}
	ctx, cancel := context.WithTimeout(rctx, 10*time.Second)
	defer cancel()
	err := r.svc.call(ctx, bsvc.OpStart, bsvc.Round{Why: why}, nil)
	var re *control.RemoteError
	if errors.As(err, &re) && re.Msg == bsvc.ErrRunning {
		return errBackupRunning
	}
	return err
}

var errBackupRunning = errors.New("a backup is already running")

// finalBackupTimeout bounds the final round within the teardown's limit,
// so that the steps after it (closing the audit log, erasing the volumes)
// keep their time.
const finalBackupTimeout = 30 * time.Second

// finalAnswerMargin is the part of it left for the round's answer.
const finalAnswerMargin = 3 * time.Second

// final is the teardown step of a final round: the workload has stopped,
// so its files are at rest, and the volumes are not erased yet. A source
// that is not backed up in time fails the step, so the node does not
// report a clean power-off; the volumes are erased all the same.
func (r *backups) final(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, finalBackupTimeout)
	defer cancel()
	// The process may be between a crash and its restart: wait for it,
	// within the step's share.
	if err := r.svc.waitRunning(ctx); err != nil {
		return fmt.Errorf("the final round: %w", err)
	}
	deadline, _ := ctx.Deadline()
	secs := int((time.Until(deadline) - finalAnswerMargin) / time.Second)
	if secs < 1 {
		return errors.New("the final round: no time left in the teardown")
	}
	// The teardown canceled r.ctx ("stop backups"); the final round's
	// commands get a context of their own.
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	r.mu.Lock()
	r.ctx, r.cancel = rctx, rcancel
	r.mu.Unlock()
	var res bsvc.Result
	// The round itself ends a few seconds before the step's share, so
	// that its answer, with what failed, arrives in time.
	round := bsvc.Round{Why: "shutdown", Seconds: secs}
	if err := r.svc.call(ctx, bsvc.OpRound, round, &res); err != nil {
		return fmt.Errorf("the final round: %w", err)
	}
	// The answer is untrusted like any message: a clean round has one
	// line per source.
	if res.Failed < 0 || res.Failed > len(r.cfg.Sources) || (res.Failed == 0 && len(res.Lines) != len(r.cfg.Sources)) {
		return fmt.Errorf("the final round: the backup process answered %d failures and %d lines for %d sources", res.Failed, len(res.Lines), len(r.cfg.Sources))
	}
	if res.Failed > 0 {
		return fmt.Errorf("%d of %d sources not backed up: %s", res.Failed, len(r.cfg.Sources), strings.Join(res.Lines, "; "))
	}
	return nil
}

// command starts a command source as the workload's user for the backup
// process, which gets the returned read end of its standard output. Its
// standard error goes to the console through the init's log, prefixed
// "backup command: " and escaped like the workload's output, so that it
// cannot print lines of the init's (it runs as the workload's user and
// reads the workload's data). The end of ctx (the teardown, the final
// round's bound) ends the command: SIGTERM, and SIGKILL after a grace,
// with everything it started (its session is its process group). A
// command whose reader is gone ends on its next write.
func (r *backups) command(ctx context.Context, argv []string) (*os.File, *commandStream, error) {
	// The slot is taken under the lock, and only while ctx lasts (the
	// stop step waits for the commands once it has canceled it).
	r.mu.Lock()
	if ctx.Err() != nil {
		r.mu.Unlock()
		return nil, nil, errors.New("the node is shutting down")
	}
	if r.running >= maxBackupCommands {
		n := r.running
		r.mu.Unlock()
		return nil, nil, fmt.Errorf("%d backup commands are running already, at most %d", n, maxBackupCommands)
	}
	r.running++
	r.wg.Add(1)
	r.mu.Unlock()
	started := false
	defer func() {
		if !started {
			r.mu.Lock()
			r.running--
			r.mu.Unlock()
			r.wg.Done()
		}
	}()
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	epr, epw, err := os.Pipe()
	if err != nil {
		pr.Close()
		pw.Close()
		return nil, nil, err
	}
	w := r.b.cfg.Workload
	p, err := proc.Start(proc.Spec{Argv: argv, UID: uint32(w.UID), GID: uint32(w.GID), Dir: "/", Stdout: pw, Stderr: epw})
	pw.Close()
	epw.Close()
	if err != nil {
		pr.Close()
		epr.Close()
		return nil, nil, err
	}
	started = true
	r.b.goSafe("backup command stderr", func() {
		if err := bootlog.CopyLines(epr, bootlog.MaxLine, func(s string) { r.b.log.Info("backup command: " + s) }); err != nil {
			r.b.log.Warn("backup command: reading its standard error: " + err.Error())
		}
		epr.Close()
	})
	var once sync.Once
	stop := func() {
		once.Do(func() {
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
		defer func() {
			r.mu.Lock()
			r.running--
			r.mu.Unlock()
			r.wg.Done()
		}()
		select {
		case <-ctx.Done():
			stop()
		case <-p.Done():
		}
		<-p.Done()
	})
	return pr, &commandStream{p: p, stop: stop, name: argv[0]}, nil
}

// commandStopGrace is how long a backup command gets between SIGTERM and
// SIGKILL when its round ends early.
const commandStopGrace = 5 * time.Second

// commandStream is a command source PID1 started for the backup process.
type commandStream struct {
	p    *proc.Process
	stop func()
	name string
}

// exitErr is how the command ended, once it has: nil for exit status 0.
func (c *commandStream) exitErr() error {
	<-c.p.Done()
	if st := c.p.Status(); st.Signaled() || st.ExitStatus() != 0 {
		return fmt.Errorf("%s: exit status %d (signal %d)", c.name, st.ExitStatus(), st.Signal())
	}
	return nil
}

// signalGroup signals the process group a child leads (proc.Start puts
// each child in a session of its own), reaching what it started too.
func signalGroup(p *proc.Process, sig syscall.Signal) {
	if err := unix.Kill(-p.Pid(), sig); err != nil {
		p.Signal(sig) // the leader alone, if the group is gone
	}
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

// backupStatus is the status line for backups, as the backup process
// gives it.
func (b *boot) backupStatus() string {
	r := b.backups
	if r == nil {
		return "not configured"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var st string
	if err := r.svc.call(ctx, bsvc.OpStatus, nil, &st); err != nil {
		return "no answer from the backup process: " + err.Error()
	}
	return st
}
