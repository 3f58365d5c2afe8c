// Package backup is the backup rounds' own process: it reads the backup
// sources, encrypts them (internal/backup) and talks to the object store
// (internal/objstore). PID1 starts it (the init binary with the role
// "backup") as its own uid, with one capability, CAP_DAC_READ_SEARCH, to
// read the workload's files, which Landlock narrows to the sources (read
// only) and the staging directory and a directory store (read and write).
// It changes nothing of the workload's: a spool file is removed, once its
// backup is stored, by PID1 on request (backup.RemoveSpoolFile); a
// command source is started by PID1 as the workload's user, which passes
// its standard output in. It holds the S3 credentials and the service's
// public key; never a TLS key or a volume key.
package backup

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
	"github.com/bulwarkvm/bulwark/services/service"
)

// Config is the answer to OpConfig.
type Config struct {
	Node    string `json:"node"`
	Staging string `json:"staging"`
	// ReadOnly are the data volumes' mount points that hold sources:
	// the process may read below them (a source the workload makes later
	// is covered, and a mount point cannot be swapped for a link).
	ReadOnly []string      `json:"read_only"`
	Backup   config.Backup `json:"backup"`
}

// Operations on the control socket.
const (
	// The backup process asks PID1:
	OpConfig  = "backup.config"  // no arguments; Config
	OpAudit   = "backup.audit"   // Audit; nothing
	OpCommand = "backup.command" // Command{Source}; Command{Handle} and the command's standard output
	OpExit    = "backup.exit"    // Command{Handle}; Exit: how the command ended
	OpRemove  = "backup.remove"  // Remove; nothing
	// PID1 asks the backup process:
	OpCheck  = "backup.check"  // no arguments; Check
	OpStart  = "backup.start"  // Round{Why}; nothing, or an error (ErrRunning)
	OpRound  = "backup.round"  // Round{Why}; Result, when the round is over
	OpCancel = "backup.cancel" // no arguments; nothing: running rounds end
	OpStatus = "backup.status" // no arguments; a status line
)

// Audit is one backup record the process asks PID1 to append.
type Audit struct {
	Why    string `json:"why"`
	What   string `json:"what"`
	Result string `json:"result"`
}

// Command names a command source (by its index in the config) or a
// started command (by the handle PID1 gave it).
type Command struct {
	Source int    `json:"source,omitempty"`
	Handle uint64 `json:"handle,omitempty"`
}

// Exit is how a command source ended: empty when it exited 0.
type Exit struct {
	Err string `json:"err,omitempty"`
}

// Remove asks PID1 to remove a spool file whose backup is stored.
type Remove struct {
	Dir  string `json:"dir"`
	Name string `json:"name"`
}

// Check is the answer to OpCheck: the store as first reached, or why it
// was not; RegionError is set when the bucket is in another region,
// which is fatal to the boot.
type Check struct {
	Detail      string `json:"detail"`
	Unreachable string `json:"unreachable,omitempty"`
	RegionError string `json:"region_error,omitempty"`
}

// Round is the argument of OpStart and OpRound. Seconds bounds an
// OpRound (the final round's share of the teardown), so that the round
// ends and answers with its failures before PID1 stops waiting.
type Round struct {
	Why     string `json:"why"`
	Seconds int    `json:"seconds,omitempty"`
}

// Result is a round's outcome: one line per source, and how many failed.
type Result struct {
	Lines  []string `json:"lines"`
	Failed int      `json:"failed"`
}

// ErrRunning is the error text of OpStart while a round runs.
const ErrRunning = "a backup is already running"

// Syscalls are what the backup process calls beyond the Go runtime's: its
// connections to the object store, reading the sources (openat2 never
// follows a symbolic link), its staging files and the segments' secrets.
var Syscalls = []string{"socket", "connect", "bind", "openat2", "getdents64", "fsync", "fdatasync", "ftruncate",
	"linkat", "unlinkat", "renameat", "renameat2", "mkdirat", "statx", "fchmod", "fchown", "sendto", "recvfrom", "ppoll",
	// net/http sends a staged file's body with sendfile or splice.
	"sendfile", "splice", "copy_file_range", "fadvise64",
	// each segment's secret lives in locked memory (internal/secret).
	"mlock", "munlock"}

// Main runs the backup process; ctl is the control socket.
func Main(ctl *os.File, files []*os.File) int {
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
		OpCheck: gate(func(ctx context.Context, _ json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			return r.check(ctx), nil, nil
		}),
		OpStart: gate(func(_ context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a Round
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			return nil, nil, r.start(a.Why)
		}),
		OpRound: gate(func(ctx context.Context, raw json.RawMessage, _ []*os.File) (any, []*os.File, error) {
			var a Round
			if err := control.Decode(raw, &a); err != nil {
				return nil, nil, err
			}
			if a.Seconds < 1 || a.Seconds > 3600 {
				return nil, nil, fmt.Errorf("a round of %d s: want 1 to 3600", a.Seconds)
			}
			r.mu.Lock()
			if r.running {
				r.mu.Unlock()
				return nil, nil, errors.New(ErrRunning)
			}
			r.running = true
			r.mu.Unlock()
			ctx, cancel := context.WithTimeout(ctx, time.Duration(a.Seconds)*time.Second)
			defer cancel()
			lines, failed := r.safeRound(ctx, a.Why)
			r.mu.Lock()
			r.running, r.last, r.lastAt = false, lines, time.Now()
			r.mu.Unlock()
			return Result{Lines: lines, Failed: failed}, nil, nil
		}),
		OpCancel: gate(func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
			r.cancel()
			r.wg.Wait()
			return nil, nil, nil
		}),
		OpStatus: gate(func(context.Context, json.RawMessage, []*os.File) (any, []*os.File, error) {
			return r.status(), nil, nil
		}),
	}
	var cfg Config
	proc, err := service.Start(ctl, handlers, OpConfig, &cfg)
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
	cfg  Config
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

func (r *rounds) init(p *service.Process, cfg Config) error {
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
	if _, err := r.call(context.Background(), OpAudit, Audit{Why: why, What: what, Result: result}, nil); err != nil {
		r.log.Error("backup: the audit record was not written", "err", err)
	}
}

// check connects the store for the first time (the boot's try).
func (r *rounds) check(ctx context.Context) Check {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := r.store(ctx)
	var re *s3.RegionError
	switch {
	case errors.As(err, &re):
		return Check{RegionError: err.Error()}
	case err != nil:
		return Check{Unreachable: err.Error()}
	}
	return Check{Detail: st.String()}
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
		return errors.New(ErrRunning)
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
			_, err := r.call(ctx, OpRemove, Remove{Dir: dir, Name: name}, nil)
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
	var c Command
	fds, err := r.call(ctx, OpCommand, Command{Source: i}, &c)
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
		var e Exit
		// The command's exit comes once its output has ended; PID1
		// bounds the wait too, and ends the command with the round.
		ectx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if _, err := r.proc.Peer.Call(ectx, OpExit, Command{Handle: c.Handle}, &e); err != nil {
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
