package main

import (
	"archive/tar"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bulwarkvm/bulwark/internal/backup"
	"github.com/bulwarkvm/bulwark/internal/objstore"
	"github.com/bulwarkvm/bulwark/internal/objstore/s3"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

func backupCmd() *cobra.Command {
	start := postCmd("start", "/v1/backup", "Make a running node start a backup round now",
		`Makes the node run a backup round of the sources its config names now
(control-plane role), as it does every backup.interval_seconds and at
shutdown with backup.final_on_shutdown. The node says "backup started";
the round's result is in its status and on its console.`,
		`  bulwarkctl backup start --node 10.0.0.5:9443 --ca acme-ca.pem --cert robot.pem --key robot.key`)
	c := group("backup", "The service's backups: keys, list, verify, restore (offline), and start (a node)",
		backupKeygenCmd(), backupListCmd(), backupRestoreCmd(true), backupRestoreCmd(false), backupDecryptLegacyCmd(), start)
	c.Long = `Backups are made by the nodes, sealed per segment for the service's RSA-3072
public key. Everything here but start runs offline, with the service's
private key, against the bucket or directory the nodes write to.`
	return c
}

func backupKeygenCmd() *cobra.Command {
	var out string
	var asJSON bool
	c := &cobra.Command{
		Use:   "keygen --out PREFIX",
		Short: "Make the service's RSA-3072 backup key pair",
		Long: `Makes the service's backup key pair: PREFIX.key, the private key (0600;
keep it off the nodes: restores need it), and PREFIX.pub, the public key
for the node config's backup.public_key. An existing key is never
overwritten.`,
		Example: `  bulwarkctl backup keygen --out svc`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return backupKeygen(out, asJSON, cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&out, "out", "", "file name `PREFIX`: PREFIX.key (private, 0600) and PREFIX.pub (required)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the files and the key id as JSON")
	return c
}

// backupKeygen makes the service's RSA-3072 key pair. The private key file
// is created owner-only and never overwritten.
func backupKeygen(out string, asJSON bool, stdout io.Writer) error {
	if out == "" {
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
	f, err := os.OpenFile(out+".key", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
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
	if err := os.WriteFile(out+".pub", pub, 0o644); err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, map[string]string{"private_key_file": out + ".key", "public_key_file": out + ".pub", "key_id": id.String()})
	}
	fmt.Fprintf(stdout, "private key %s.key (keep it off the nodes)\npublic key  %s.pub (goes into the node config: backup.public_key)\nkey id      %s\n", out, out, id)
	return nil
}

type storeFlags struct {
	store, endpoint, region, ca string
	allowHTTP                   bool
}

func addStoreFlags(c *cobra.Command) *storeFlags {
	sf := &storeFlags{}
	f := c.Flags()
	f.StringVar(&sf.store, "store", "", "where the backups are: a directory `DIR`, or s3://BUCKET[/PREFIX] (required)")
	f.StringVar(&sf.endpoint, "endpoint", "", "S3 endpoint `URL` (s3 stores)")
	f.StringVar(&sf.region, "region", "", "the region the bucket must be in (s3 stores)")
	f.BoolVar(&sf.allowHTTP, "allow-http", false, "accept a plain-http S3 endpoint")
	f.StringVar(&sf.ca, "ca", "", "PEM `FILE` of the CA certificates that anchor the S3 endpoint (default: the system's roots)")
	c.Long = withEnv(c.Long, s3Env...)
	return sf
}

// open returns the store; S3 credentials come from AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY and (temporary credentials) AWS_SESSION_TOKEN,
// never from flags (which other users can see).
func (f *storeFlags) open(ctx context.Context) (objstore.Store, error) {
	s := f.store
	if s == "" {
		return nil, usageError{"no --store: give the backups' directory or s3://BUCKET[/PREFIX] (with --endpoint and --region)"}
	}
	if !strings.HasPrefix(s, "s3://") {
		return objstore.NewDir(s)
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return nil, usageError{fmt.Sprintf("--store %q is not s3://BUCKET[/PREFIX]", s)}
	}
	var roots *x509.CertPool
	if f.ca != "" {
		b, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, err
		}
		if roots, err = pki.ParsePool(b); err != nil {
			return nil, fmt.Errorf("--ca %s: %w", f.ca, err)
		}
	}
	return s3.New(ctx, s3.Options{
		Endpoint: f.endpoint, AllowHTTP: f.allowHTTP, Bucket: u.Host, Prefix: u.Path, RootCAs: roots,
		Region: f.region, AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"),
		SessionToken: os.Getenv("AWS_SESSION_TOKEN"),
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

func backupListCmd() *cobra.Command {
	var asJSON, quiet bool
	c := &cobra.Command{
		Use:   "list --store STORE",
		Short: "List the backups in a store, complete or not",
		Long: `Lists the backups in a directory or bucket: node, backup id, objects, bytes,
and whether the backup is complete (has its manifest). Needs no key. A
large bucket takes a while to list: progress goes to standard error.`,
		Example: `  bulwarkctl backup list --store ./backups
  bulwarkctl backup list --store s3://bucket/prefix --endpoint https://s3.eu-north-1.example --region eu-north-1 --json`,
		Args: noArgs,
	}
	sf := addStoreFlags(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	c.Flags().BoolVar(&quiet, "quiet", false, "no progress on standard error")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		st, err := sf.open(ctx)
		if err != nil {
			return err
		}
		stdout := cmd.OutOrStdout()
		p := newProgress(cmd.ErrOrStderr(), quiet, "backup list", -1)
		p.describe("listing " + st.String())
		ls, err := backup.List(ctx, st)
		p.finish(err == nil)
		if err != nil {
			return err
		}
		if asJSON {
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
	return c
}

type restoreFlags struct {
	keys, node, id, to string
	workers            int
	quiet, json        bool
}

func backupRestoreCmd(verifyOnly bool) *cobra.Command {
	rf := &restoreFlags{}
	c := &cobra.Command{Args: noArgs}
	if verifyOnly {
		c.Use = "verify --store STORE --key FILE[,FILE...] --node NODE --id ID"
		c.Short = "Authenticate a whole backup, writing nothing"
		c.Long = `Authenticates every chunk, every segment and the manifest of a backup with
the service's private key, and writes nothing. Exit 1 on the first
damaged, missing, replaced or reordered piece, naming it.`
		c.Example = `  bulwarkctl backup verify --store ./backups --key svc.key --node db-1 --id 5f0c3a…
  bulwarkctl backup verify --store s3://bucket/prefix --endpoint https://s3.eu-north-1.example --region eu-north-1 --key old.key,svc.key --node db-1 --id 5f0c3a…`
	} else {
		c.Use = "restore --store STORE --key FILE[,FILE...] --node NODE --id ID --to DIR|-"
		c.Short = "Restore a backup, writing only verified bytes"
		c.Long = `Restores a backup with the service's private key. Each chunk's bytes are
written only after the chunk is verified. A tree backup (a directory) is
unpacked below --to; any other is written there as one file, under a
temporary name renamed when the whole backup is verified; - writes the
plaintext to standard output (the report then goes to standard error).
Nothing existing is overwritten.`
		c.Example = `  bulwarkctl backup restore --store ./backups --key svc.key --node db-1 --id 5f0c3a… --to ./restored
  bulwarkctl backup restore --store ./backups --key svc.key --node db-1 --id 5f0c3a… --to - | tar -t`
	}
	sf := addStoreFlags(c)
	f := c.Flags()
	f.StringVar(&rf.keys, "key", "", "the service's private key `FILE`, or several comma-separated (old keys after a rotation) (required)")
	f.StringVar(&rf.node, "node", "", "the `NAME` of the node that made the backup (required)")
	f.StringVar(&rf.id, "id", "", "the backup `ID` (backup list) (required)")
	if !verifyOnly {
		f.StringVar(&rf.to, "to", "", "a directory `DIR` (tree backups are unpacked, others written as one file), or - for standard output (required)")
	}
	f.IntVar(&rf.workers, "workers", 0, "verification workers (default: one per CPU)")
	f.BoolVar(&rf.quiet, "quiet", false, "no progress on standard error")
	f.BoolVar(&rf.json, "json", false, "print the report as JSON")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		return backupRestore(cmd, sf, rf, verifyOnly)
	}
	return c
}

// backupRestore authenticates a whole backup; verify writes nothing, and
// restore writes each chunk's bytes only after the chunk is verified.
func backupRestore(cmd *cobra.Command, sf *storeFlags, rf *restoreFlags, verifyOnly bool) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	verb := "restore"
	if verifyOnly {
		verb = "verify"
	}
	name := "backup " + verb
	if rf.node == "" || rf.id == "" {
		return usageError{name + ": needs --node and --id (bulwarkctl backup list --store STORE shows both)"}
	}
	if !verifyOnly && rf.to == "" {
		return usageError{name + ": needs --to DIR, or --to - for standard output"}
	}
	if rf.keys == "" {
		return usageError{name + ": no --key: give the service's private key file (bulwarkctl backup keygen made it), and after a rotation the old ones too"}
	}
	kr, err := loadKeyring(rf.keys)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	st, err := sf.open(ctx)
	if err != nil {
		return err
	}
	m, err := backup.ReadManifest(ctx, st, rf.node, rf.id, kr)
	if err != nil {
		return err
	}
	var w io.Writer = io.Discard
	var finish func() error
	switch {
	case verifyOnly:
	case rf.to == "-":
		w = stdout
	case m.Source.Kind == "tree":
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := untar(pr, rf.to)
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
		if err := os.MkdirAll(rf.to, 0o700); err != nil {
			return err
		}
		final := filepath.Join(rf.to, restoredName(m))
		if _, err := os.Lstat(final); err == nil {
			return fmt.Errorf("%s exists; restore does not overwrite: give another --to", final)
		}
		f, err := os.CreateTemp(rf.to, ".restore-*")
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
	// Progress counts the verified bytes as they are written (Restore's
	// own callback comes once a segment, 64 MiB apart).
	progress := newProgress(stderr, rf.quiet, name, m.PlaintextBytes)
	cw := &countingWriter{w: w, progress: progress}
	err = backup.Restore(ctx, st, m, kr, cw, rf.workers, nil)
	if pw, ok := w.(*io.PipeWriter); ok && err != nil {
		pw.CloseWithError(err)
	}
	if finish != nil && (err == nil || m.Source.Kind == "tree") {
		if ferr := finish(); err == nil {
			err = ferr
		}
	}
	if err != nil && m.Source.Kind == "tree" && !verifyOnly && rf.to != "-" {
		err = fmt.Errorf("%w (%s may hold part of the tree, made of verified bytes only)", err, rf.to)
	}
	progress.finish(err == nil)
	if err != nil {
		return err
	}
	report := stdout
	if rf.to == "-" {
		report = stderr // stdout holds the plaintext
	}
	if rf.json {
		res := map[string]any{"backup_id": m.BackupID, "node": m.Node, "source": m.Source, "plaintext_bytes": m.PlaintextBytes,
			"segments": len(m.Segments), "key_id": m.KeyID, "authentic": true}
		if !verifyOnly {
			res["restored_to"] = rf.to
		}
		return printJSON(report, res)
	}
	done := "restored to " + rf.to
	if verifyOnly {
		done = "verified"
	}
	fmt.Fprintf(report,
		"backup %s of %s (%s %s, %s, %d segments, key %s…): every chunk, segment and the manifest authentic; %s\n",
		m.BackupID, m.Node, m.Source.Kind, m.Source.Name, mib(m.PlaintextBytes), len(m.Segments), m.KeyID[:16], done)
	return nil
}

// countingWriter reports the bytes written through it.
type countingWriter struct {
	w        io.Writer
	n        int64
	progress *progress
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.progress.set(c.n)
	return n, err
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

func backupDecryptLegacyCmd() *cobra.Command {
	var key, out string
	c := &cobra.Command{
		Use:   "decrypt-legacy --key FILE [-o OUT] FILE",
		Short: "Decrypt a pghoard/rohmu pghoa1 file",
		Long: `Decrypts one file in pghoard's (rohmu's) pghoa1 format with the RSA private
key it was encrypted for, verifying it over the whole file before any
output is written. -o writes to a temporary name renamed at the end, so a
failure leaves no partial file.`,
		Example: `  bulwarkctl backup decrypt-legacy --key pghoard.key -o base.tar 000000010000000000000003.pghoa1`,
		Args:    exactArgs(1, "give one pghoa1 FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" {
				return usageError{"backup decrypt-legacy: use --key FILE [-o OUT] IN"}
			}
			return backupDecryptLegacy(key, out, args[0], cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&key, "key", "", "the RSA private key `FILE` (PEM) the file was encrypted for (required)")
	c.Flags().StringVarP(&out, "output", "o", "-", "output `FILE`, or - for standard output")
	return c
}

func backupDecryptLegacy(key, out, in string, stdout io.Writer) error {
	b, err := os.ReadFile(key)
	if err != nil {
		return err
	}
	k, err := backup.ParsePrivateKey(b)
	if err != nil {
		return err
	}
	fin, err := os.Open(in)
	if err != nil {
		return err
	}
	defer fin.Close()
	st, err := fin.Stat()
	if err != nil {
		return err
	}
	if out != "-" {
		// Written to a temporary name and renamed, so a failure leaves
		// no partial file under the output name.
		f, err := os.CreateTemp(filepath.Dir(out), ".decrypt-*")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		if err := backup.DecryptLegacy(fin, st.Size(), k, f); err != nil {
			return fmt.Errorf("%s: %w", in, err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
		return os.Rename(f.Name(), out)
	}
	if err := backup.DecryptLegacy(fin, st.Size(), k, stdout); err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
