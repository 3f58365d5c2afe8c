package main

import (
	"archive/tar"
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bulwarkvm/bulwark/internal/backup"
	"github.com/bulwarkvm/bulwark/internal/objstore"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

func backupCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"backup: use keygen, list, verify, restore, decrypt-legacy or start"}
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "keygen":
		return backupKeygen(rest, stdout)
	case "list":
		return backupList(rest, stdout)
	case "verify":
		return backupRestore(rest, stdout, stderr, true)
	case "restore":
		return backupRestore(rest, stdout, stderr, false)
	case "decrypt-legacy":
		return backupDecryptLegacy(rest, stdout)
	case "start":
		return postCommand("/v1/backup", rest, stdout)
	}
	return usageError{fmt.Sprintf("backup: unknown command %q", sub)}
}

// backupKeygen makes the service's RSA-3072 key pair. The private key file
// is created owner-only and never overwritten.
func backupKeygen(args []string, stdout io.Writer) error {
	fs := newFlags("backup keygen")
	out := fs.String("out", "", "file name prefix: PREFIX.key (private, 0600) and PREFIX.pub")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		return usageError{"backup keygen: use --out PREFIX"}
	}
	k, err := backup.GenerateKey()
	if err != nil {
		return err
	}
	priv, err := backup.PrivateKeyPEM(k)
	if err != nil {
		return err
	}
	pub, err := backup.PublicKeyPEM(&k.PublicKey)
	if err != nil {
		return err
	}
	id, err := backup.IDOf(&k.PublicKey)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(*out+".key", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("backup keygen: %w (an existing key is never overwritten)", err)
	}
	if _, err := f.Write(priv); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.WriteFile(*out+".pub", pub, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "private key %s.key (keep it off the nodes)\npublic key  %s.pub (goes into the node config: backup.public_key)\nkey id      %s\n", *out, *out, id)
	return nil
}

type storeFlags struct {
	store, endpoint, region, ca *string
	allowHTTP                   *bool
}

func addStoreFlags(fs *flag.FlagSet) storeFlags {
	return storeFlags{
		store:     fs.String("store", "", "a directory, or s3://BUCKET[/PREFIX]"),
		endpoint:  fs.String("endpoint", "", "S3 endpoint URL (s3 stores)"),
		region:    fs.String("region", "", "the region the bucket must be in (s3 stores)"),
		allowHTTP: fs.Bool("allow-http", false, "accept a plain-http S3 endpoint"),
		ca:        fs.String("ca", "", "PEM file of the CA certificates that anchor the S3 endpoint (default: the system's roots)"),
	}
}

// open returns the store; S3 credentials come from AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, never from flags (which other users can see).
func (f storeFlags) open(ctx context.Context) (objstore.Store, error) {
	s := *f.store
	if s == "" {
		return nil, usageError{"no --store"}
	}
	if !strings.HasPrefix(s, "s3://") {
		return objstore.NewDir(s)
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return nil, usageError{fmt.Sprintf("--store %q is not s3://BUCKET[/PREFIX]", s)}
	}
	var roots *x509.CertPool
	if *f.ca != "" {
		b, err := os.ReadFile(*f.ca)
		if err != nil {
			return nil, err
		}
		if roots, err = pki.ParsePool(b); err != nil {
			return nil, fmt.Errorf("--ca %s: %w", *f.ca, err)
		}
	}
	return objstore.NewS3(ctx, objstore.S3Options{
		Endpoint: *f.endpoint, AllowHTTP: *f.allowHTTP, Bucket: u.Host, Prefix: u.Path, RootCAs: roots,
		Region: *f.region, AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"),
	})
}

func loadKeyring(files string) (backup.Keyring, error) {
	if files == "" {
		return nil, usageError{"no --key"}
	}
	kr := backup.Keyring{}
	for _, f := range split(files) {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		k, err := backup.ParsePrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		one, err := backup.NewKeyring(k)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		for id, k := range one {
			kr[id] = k
		}
	}
	return kr, nil
}

func backupList(args []string, stdout io.Writer) error {
	fs := newFlags("backup list")
	sf := addStoreFlags(fs)
	asJSON := fs.Bool("json", false, "JSON output")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx := context.Background()
	st, err := sf.open(ctx)
	if err != nil {
		return err
	}
	ls, err := backup.List(ctx, st)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(ls)
	}
	for _, l := range ls {
		state := "complete"
		if !l.Complete {
			state = "INCOMPLETE (no manifest)"
		}
		fmt.Fprintf(stdout, "%s %s  %d objects, %s  %s\n", l.Node, l.ID, l.Objects, mib(l.Bytes), state)
	}
	if len(ls) == 0 {
		fmt.Fprintf(stdout, "no backups in %s\n", st)
	}
	return nil
}

// backupRestore authenticates a whole backup; verify writes nothing, and
// restore writes each chunk's bytes only after the chunk is verified.
func backupRestore(args []string, stdout, stderr io.Writer, verifyOnly bool) error {
	name := "backup restore"
	if verifyOnly {
		name = "backup verify"
	}
	fs := newFlags(name)
	sf := addStoreFlags(fs)
	keys := fs.String("key", "", "private key file(s), comma-separated (old keys after a rotation)")
	node := fs.String("node", "", "the node that made the backup")
	id := fs.String("id", "", "the backup id")
	to := fs.String("to", "", "restore: a directory (tree backups are unpacked, others written as one file) or - for standard output")
	workers := fs.Int("workers", 0, "verification workers (default: one per CPU)")
	quiet := fs.Bool("quiet", false, "no progress on standard error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *node == "" || *id == "" {
		return usageError{name + ": needs --node and --id"}
	}
	if !verifyOnly && *to == "" {
		return usageError{name + ": needs --to"}
	}
	kr, err := loadKeyring(*keys)
	if err != nil {
		return err
	}
	ctx := context.Background()
	st, err := sf.open(ctx)
	if err != nil {
		return err
	}
	m, err := backup.ReadManifest(ctx, st, *node, *id, kr)
	if err != nil {
		return err
	}
	progress := newProgress(stderr, *quiet, m.PlaintextBytes)
	var w io.Writer = io.Discard
	var finish func() error
	switch {
	case verifyOnly:
	case *to == "-":
		w = stdout
	case m.Source.Kind == "tree":
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := untar(pr, *to)
			pr.CloseWithError(err)
			done <- err
		}()
		w = pw
		finish = func() error {
			pw.Close()
			return <-done
		}
	default:
		// A temporary name, renamed when the whole backup is verified,
		// so a failure leaves no partial file under the final name.
		if err := os.MkdirAll(*to, 0o700); err != nil {
			return err
		}
		final := filepath.Join(*to, restoredName(m))
		if _, err := os.Lstat(final); err == nil {
			return fmt.Errorf("%s exists; restore does not overwrite", final)
		}
		f, err := os.CreateTemp(*to, ".restore-*")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		w = f
		finish = func() error {
			if err := f.Sync(); err != nil {
				return err
			}
			return os.Rename(f.Name(), final)
		}
	}
	err = backup.Restore(ctx, st, m, kr, w, *workers, progress.update)
	if pw, ok := w.(*io.PipeWriter); ok && err != nil {
		pw.CloseWithError(err)
	}
	if finish != nil && (err == nil || m.Source.Kind == "tree") {
		if ferr := finish(); err == nil {
			err = ferr
		}
	}
	if err != nil && m.Source.Kind == "tree" && !verifyOnly && *to != "-" {
		err = fmt.Errorf("%w (%s may hold part of the tree, made of verified bytes only)", err, *to)
	}
	progress.done()
	if err != nil {
		return err
	}
	verb, report := "restored to "+*to, stdout
	if verifyOnly {
		verb = "verified"
	}
	if *to == "-" {
		report = stderr // stdout holds the plaintext
	}
	fmt.Fprintf(report,
		"backup %s of %s (%s %s, %s, %d segments, key %s…): every chunk, segment and the manifest authentic; %s\n",
		m.BackupID, m.Node, m.Source.Kind, m.Source.Name, mib(m.PlaintextBytes), len(m.Segments), m.KeyID[:16], verb)
	return nil
}

func restoredName(m *backup.Manifest) string {
	if m.Source.Kind == "file" && m.Source.Name != "" && !strings.ContainsAny(m.Source.Name, "/\\") && m.Source.Name != ".." {
		return m.Source.Name
	}
	return m.BackupID + ".out"
}

// untar unpacks a tree backup below dir: regular files, directories and
// symbolic links, none of which may reach outside dir.
func untar(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("tree backup: %w", err)
		}
		name := filepath.Clean(h.Name)
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("tree backup: entry %q lies outside the restore directory", h.Name)
		}
		mode := os.FileMode(h.Mode) & 0o777
		switch h.Typeflag {
		case tar.TypeDir:
			if name != "." {
				if err := root.MkdirAll(name, mode|0o700); err != nil {
					return err
				}
			}
		case tar.TypeReg:
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return err
			}
		default:
			return fmt.Errorf("tree backup: entry %q has type %q, which restore does not create", h.Name, h.Typeflag)
		}
	}
}

func backupDecryptLegacy(args []string, stdout io.Writer) error {
	fs := newFlags("backup decrypt-legacy")
	key := fs.String("key", "", "the RSA private key (PEM) the files were encrypted for")
	out := fs.String("o", "-", "output file, or - for standard output")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *key == "" || fs.NArg() != 1 {
		return usageError{"backup decrypt-legacy: use --key FILE [-o OUT] IN"}
	}
	b, err := os.ReadFile(*key)
	if err != nil {
		return err
	}
	k, err := backup.ParsePrivateKey(b)
	if err != nil {
		return err
	}
	in, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	w := stdout
	if *out != "-" {
		// Written to a temporary name and renamed, so a failure leaves
		// no partial file under the output name.
		f, err := os.CreateTemp(filepath.Dir(*out), ".decrypt-*")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		if err := backup.DecryptLegacy(in, st.Size(), k, f); err != nil {
			return fmt.Errorf("%s: %w", fs.Arg(0), err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
		return os.Rename(f.Name(), *out)
	}
	if err := backup.DecryptLegacy(in, st.Size(), k, w); err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// progress prints a progress line to standard error, at most twice a
// second, for long operations.
type progress struct {
	w     io.Writer
	off   bool
	total int64
	last  time.Time
	start time.Time
}

func newProgress(w io.Writer, off bool, total int64) *progress {
	return &progress{w: w, off: off, total: total, start: time.Now()}
}

func (p *progress) update(done int64) {
	if p.off || time.Since(p.last) < 500*time.Millisecond {
		return
	}
	p.last = time.Now()
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(done) / float64(p.total)
	}
	rate := float64(done) / (1 << 20) / max(time.Since(p.start).Seconds(), 0.001)
	fmt.Fprintf(p.w, "\r%s of %s  %5.1f%%  %.0f MiB/s   ", mib(done), mib(p.total), pct, rate)
}

func (p *progress) done() {
	if !p.off && !p.last.IsZero() {
		fmt.Fprintln(p.w)
	}
}
