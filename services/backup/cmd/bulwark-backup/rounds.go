// The backup rounds: this process reads the backup sources, encrypts them
// (internal/backup) and talks to the object store (internal/objstore/s3,
// or a directory store). It runs as its own uid, with one capability,
// CAP_DAC_READ_SEARCH, to read the workload's files, which Landlock
// narrows to the sources (read only) and the staging directory and a
// directory store (read and write). It changes nothing of the workload's:
// a spool file is removed, once its backup is stored, by PID1 on request
// (internal/backup's RemoveSpoolFile, through bsvc.OpRemove); a command
// source is started by PID1 as the workload's user, which passes its
// standard output in. It holds the S3 credentials and the service's
// public key; never a TLS key or a volume key.

package main

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bulwarkvm/bulwark/internal/backup"
	"github.com/bulwarkvm/bulwark/internal/config"
	"github.com/bulwarkvm/bulwark/internal/control"
	"github.com/bulwarkvm/bulwark/internal/objstore"
	"github.com/bulwarkvm/bulwark/internal/objstore/s3"
	"github.com/bulwarkvm/bulwark/internal/pki"
	"github.com/bulwarkvm/bulwark/internal/safego"
	"github.com/bulwarkvm/bulwark/internal/sandbox"
	bsvc "github.com/bulwarkvm/bulwark/services/backup"
	"github.com/bulwarkvm/bulwark/services/service"
)

// Syscalls are what the backup process calls beyond the Go runtime's: its
// connections to the object store, reading the sources (openat2 never
// follows a symbolic link), its staging files and the segments' secrets.
var Syscalls = []string{"socket", "connect", "bind", "openat2", "getdents64", "fsync", "fdatasync", "ftruncate",
	"linkat", "unlinkat", "renameat", "renameat2", "mkdirat", "statx", "fchmod", "fchown", "sendto", "recvfrom", "ppoll",
	// net/http can send a body that is a file with sendfile or splice
	// (minio-go wraps every body today, so it does not; kept for a
	// directory store's copies and for a client that passes files on).
	"sendfile", "splice", "copy_file_range", "fadvise64",
	// each segment's secret lives in locked memory (internal/secret).
	"mlock", "munlock"}

// run runs the backup process; ctl is the control socket.
func run(ctl *os.File, files []*os.File) int {
	for _, f := range files {
		f.Close()
	}
	r := &rounds{}
	// PID1's requests are served only once the process is configured
	// and confined: nothing runs unconfined, nor on a half-set state.
	confined := make(chan struct{})
	gate := func(h control.Handler) control.Handler {
		return func(ctx context.Context, raw json.RawMessage, fds []*os.File) (any, []*os.File, error) {
			select {
			case <-confined:
				return h(ctx, raw, fds)
			default:
				return nil, nil, errors.New("starting")
			}
		}
	}
	handlers := map[string]control.Handler{
		bsvc.OpCheck: gate(func(ctx context.Context, _ json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			return r.check(ctx), nil, nil
		}),
		bsvc.OpStart: gate(func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a bsvc.Round
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			return nil, nil, r.start(a.Why)
		}),
		bsvc.OpRound: gate(func(ctx context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a bsvc.Round
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			if a.Seconds < 1 || a.Seconds > 3600 {
				return nil, nil, fmt.Errorf("a round of %d s: want 1 to 3600", a.Seconds)
			}
			r.mu.Lock()
			if r.running {
				r.mu.Unlock()
				return nil, nil, errors.New(bsvc.ErrRunning)
			}
			r.running = true
			r.mu.Unlock()
			ctx, cancel := context.WithTimeout(ctx, time.Duration(a.Seconds)*time.Second)
			defer cancel()
			lines, failed := r.safeRound(ctx, a.Why)
			r.mu.Lock()
			r.running, r.last, r.lastAt = false, lines, time.Now()
			r.mu.Unlock()
			return bsvc.Result{Lines: lines, Failed: failed}, nil, nil
		}),
		bsvc.OpCancel: gate(func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
			r.cancel()
			r.wg.Wait()
			return nil, nil, nil
		}),
		bsvc.OpStatus: gate(func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
			return r.status(), nil, nil
		}),
	}
	var cfg bsvc.Config
	proc, err := service.Start(ctl, handlers, bsvc.OpConfig, &cfg)
	if err != nil {
		return 1
	}
	if err := r.init(proc, cfg); err != nil {
		proc.Log.Error("configuration", "err", err)
		return 1
	}
	// Read-only: the volumes that hold sources; read and write: the
	// staging directory and a directory store. No other file may be
	// opened, and without Landlock the process does not run: its
	// CAP_DAC_READ_SEARCH would reach every file of the node.
	pol := sandbox.Policy{ReadOnly: cfg.ReadOnly, ReadWrite: []string{cfg.Staging}, Syscalls: Syscalls, RequireLandlock: true}
	if d := cfg.Backup.Store.Dir; d != "" {
		pol.ReadWrite = append(pol.ReadWrite, d)
	}
	// The resolver's files, when the image has them (an endpoint given
	// by name); /etc is the image's, root's.
	if fi, err := os.Lstat("/etc"); err == nil && fi.IsDir() {
		pol.ReadOnly = append(pol.ReadOnly, "/etc")
	}
	rep, err := proc.Confine(pol)
	if err != nil {
		return 1
	}
	close(confined)
	if proc.Ready(rep) != nil {
		return 1
	}
	proc.Wait()
	r.cancel()
	return 0
}

// rounds runs backup rounds, one at a time.
type rounds struct {
	proc *service.Process
	log  *slog.Logger
	cfg  bsvc.Config
	pub  *rsa.PublicKey

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	st      objstore.Store
	running bool
	last    []string
	lastAt  time.Time
}

func (r *rounds) init(p *service.Process, cfg bsvc.Config) error {
	r.proc, r.log, r.cfg = p, p.Log, cfg
	r.ctx, r.cancel = context.WithCancel(context.Background())
	pub, err := backup.ParsePublicKey([]byte(cfg.Backup.PublicKey))
	if err != nil {
		return err
	}
	r.pub = pub
	if cfg.Node == "" || cfg.Staging == "" || len(cfg.Backup.Sources) == 0 {
		return errors.New("no node name, staging directory or sources")
	}
	return nil
}

// call is one request to PID1, bounded.
func (r *rounds) call(ctx context.Context, op string, args, result any) ([]*os.File, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return r.proc.Peer.Call(ctx, op, args, result)
}

func (r *rounds) audit(why, what, result string) {
	if _, err := r.call(context.Background(), bsvc.OpAudit, bsvc.Audit{Why: why, What: what, Result: result}, nil); err != nil {
		r.log.Error("backup: the audit record was not written", "err", err)
	}
}

// check connects the store for the first time (the boot's try).
func (r *rounds) check(ctx context.Context) bsvc.Check {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := r.store(ctx)
	var re *s3.RegionError
	switch {
	case errors.As(err, &re):
		return bsvc.Check{RegionError: err.Error()}
	case err != nil:
		return bsvc.Check{Unreachable: err.Error()}
	}
	return bsvc.Check{Detail: st.String()}
}

// store returns the object store, connecting (and checking the region)
// the first time it succeeds; the lock is not held while connecting.
func (r *rounds) store(ctx context.Context) (objstore.Store, error) {
	r.mu.Lock()
	st := r.st
	r.mu.Unlock()
	if st != nil {
		return st, nil
	}
	var err error
	if d := r.cfg.Backup.Store.Dir; d != "" {
		st, err = objstore.NewDir(d)
	} else {
		c := r.cfg.Backup.Store.S3
		var roots *x509.CertPool
		if c.CA != "" {
			if roots, err = pki.ParsePool([]byte(c.CA)); err != nil {
				return nil, err
			}
		}
		st, err = s3.New(ctx, s3.Options{
			Endpoint: c.Endpoint, AllowHTTP: c.AllowHTTP, Bucket: c.Bucket, Prefix: c.Prefix,
			Region: r.cfg.Backup.Region, AccessKey: c.AccessKey, SecretKey: c.SecretKey, SessionToken: c.SessionToken,
			InstanceRole: c.Credentials == "instance_role", VirtualHosted: c.Addressing == "virtual",
			ExpectedBucketOwner: c.ExpectedBucketOwner, RootCAs: roots,
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

func (r *rounds) start(why string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running {
		return errors.New(bsvc.ErrRunning)
	}
	if r.ctx.Err() != nil {
		return errors.New("the node is shutting down")
	}
	r.running = true
	r.wg.Add(1)
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

// safeRound is round with a panic turned into a failed round: the round
// reads what the bucket (and whoever is on the path to it) sends.
func (r *rounds) safeRound(ctx context.Context, why string) (lines []string, failed int) {
	err := safego.Call("backup round", func() error {
		lines, failed = r.round(ctx, why)
		return nil
	})
	if err != nil {
		line := "round: " + err.Error()
		r.log.Error("backup round failed", "err", err)
		r.audit(why, line, "failed")
		return append(lines, line), len(r.cfg.Backup.Sources)
	}
	return lines, failed
}

// round backs up every source in order; a failed source does not stop the
// others.
func (r *rounds) round(ctx context.Context, why string) (lines []string, failed int) {
	if testHookRound != nil {
		testHookRound()
	}
	r.log.Info("backup round started", "why", why)
	st, err := r.store(ctx)
	if err != nil {
		line := "store: " + err.Error()
		r.log.Error("backup round failed", "err", err)
		r.audit(why, line, "failed")
		return []string{line}, len(r.cfg.Backup.Sources)
	}
	o := backup.Options{
		Public: r.pub, Store: st, Node: r.cfg.Node, Region: r.cfg.Backup.Region,
		SegmentSize: int64(r.cfg.Backup.EffectiveSegmentMiB()) << 20, Staging: r.cfg.Staging,
		RemoveSpooled: func(dir, name string) error {
			_, err := r.call(ctx, bsvc.OpRemove, bsvc.Remove{Dir: dir, Name: name}, nil)
			return err
		},
	}
	for i, src := range r.cfg.Backup.Sources {
		start := time.Now()
		what, err := r.source(ctx, i, src, o)
		result := "ok"
		if err != nil {
			result = "failed"
			failed++
			what = fmt.Sprintf("%s %s: %v", src.Kind, src.Path+strings.Join(src.Command, " "), err)
			r.log.Error("backup failed", "source", src.Kind, "err", err)
		} else {
			what = fmt.Sprintf("%s in %s", what, time.Since(start).Round(time.Millisecond))
			r.log.Info("backup " + what)
		}
		r.audit(why, what, result)
		lines = append(lines, what)
	}
	if n, err := backup.Prune(ctx, st, r.cfg.Node, ""); err == nil && n > 0 {
		r.log.Info(fmt.Sprintf("backup: removed %d objects of incomplete backups", n))
	}
	return lines, failed
}

func (r *rounds) source(ctx context.Context, i int, src config.BackupSource, o backup.Options) (string, error) {
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
		in = backup.Tree(src.Path, filepath.Dir(r.cfg.Staging))
	default:
		o.Source = backup.Source{Kind: "command", Name: strings.Join(src.Command, " ")}
		var err error
		if in, err = r.command(ctx, i); err != nil {
			return "", err
		}
	}
	defer in.Close()
	m, err := backup.Write(ctx, in, o)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %s complete: %s %s, %d bytes, %d segments", m.BackupID, m.Region, m.Source.Kind, m.Source.Name, m.PlaintextBytes, len(m.Segments)), nil
}

// command has PID1 start command source i as the workload's user and
// reads its standard output; at the end, PID1 says how it exited.
func (r *rounds) command(ctx context.Context, i int) (io.ReadCloser, error) {
	var c bsvc.Command
	fds, err := r.call(ctx, bsvc.OpCommand, bsvc.Command{Source: i}, &c)
	if err != nil {
		return nil, err
	}
	if len(fds) != 1 {
		for _, f := range fds {
			f.Close()
		}
		return nil, fmt.Errorf("PID1 gave %d descriptors for a command's output, want 1", len(fds))
	}
	return backup.Checked(fds[0], func() error {
		var e bsvc.Exit
		// The command's exit comes once its output has ended; PID1
		// bounds the wait too, and ends the command with the round.
		ectx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if _, err := r.proc.Peer.Call(ectx, bsvc.OpExit, bsvc.Command{Handle: c.Handle}, &e); err != nil {
			return err
		}
		if e.Err != "" {
			return errors.New(e.Err)
		}
		return nil
	}), nil
}

func (r *rounds) status() string {
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
