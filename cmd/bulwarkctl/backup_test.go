package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/backup"
	"github.com/bulwarkvm/bulwark/internal/objstore/miniotest"
	"github.com/bulwarkvm/bulwark/internal/objstore/s3"
)

// TestBackupCLI: keygen, a tree backup to MinIO, then list, verify and
// restore from the host with the private key, to identical files; a
// damaged segment is refused by verify and restore leaves no output.
func TestBackupCLI(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "svc")
	out := ctl(t, 0, "backup", "keygen", "--out", keys)
	if !strings.Contains(out, "key id") {
		t.Fatal(out)
	}
	if st, err := os.Stat(keys + ".key"); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode: %v %v", st.Mode(), err)
	}
	ctl(t, 1, "backup", "keygen", "--out", keys) // never overwrites

	pubPEM, _ := os.ReadFile(keys + ".pub")
	pub, err := backup.ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := miniotest.Start(t, miniotest.Options{Region: "eu-north-1"})
	srv.MakeBucket(t, "bkp")
	t.Setenv("AWS_ACCESS_KEY_ID", miniotest.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", miniotest.SecretKey)
	ctx := context.Background()
	st, err := s3.New(ctx, s3.Options{Endpoint: srv.Endpoint(), AllowHTTP: true, Bucket: "bkp", Prefix: "p", Region: "eu-north-1", AccessKey: miniotest.AccessKey, SecretKey: miniotest.SecretKey, PartSize: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}

	// A tree with nested files, an empty file and a symbolic link.
	src := filepath.Join(dir, "data")
	os.MkdirAll(filepath.Join(src, "base/1"), 0o755)
	os.WriteFile(filepath.Join(src, "base/1/big"), backup.TestPattern(3<<20+5), 0o600)
	os.WriteFile(filepath.Join(src, "PG_VERSION"), []byte("15\n"), 0o644)
	os.WriteFile(filepath.Join(src, "empty"), nil, 0o644)
	os.Symlink("base/1/big", filepath.Join(src, "link"))
	tree := backup.Tree(src)
	m, err := backup.Write(ctx, tree, backup.Options{Public: pub, Store: st, Node: "db-1", Region: "eu-north-1",
		Source: backup.Source{Kind: "tree", Name: src}, SegmentSize: 1 << 20, Staging: t.TempDir()})
	tree.Close()
	if err != nil {
		t.Fatal(err)
	}
	s3 := []string{"--store", "s3://bkp/p", "--endpoint", srv.Endpoint(), "--region", "eu-north-1", "--allow-http"}
	with := func(args ...string) []string { return append(args, s3...) }

	if out := ctl(t, 0, with("backup", "list")...); !strings.Contains(out, "db-1 "+m.BackupID) || !strings.Contains(out, "complete") {
		t.Fatal(out)
	}
	if out := ctl(t, 1, "backup", "list", "--store", "s3://bkp/p", "--endpoint", srv.Endpoint(), "--region", "us-east-1", "--allow-http"); !strings.Contains(out, `region "eu-north-1"`) {
		t.Fatal(out)
	}
	// Temporary credentials (STS): the session token comes from
	// AWS_SESSION_TOKEN; without it the temporary key is refused.
	tmp := srv.AssumeRole(t)
	t.Setenv("AWS_ACCESS_KEY_ID", tmp.AccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", tmp.SecretAccessKey)
	if out := ctl(t, 1, with("backup", "list")...); strings.Contains(out, m.BackupID) {
		t.Fatalf("temporary credentials without their session token listed the store:\n%s", out)
	}
	t.Setenv("AWS_SESSION_TOKEN", tmp.SessionToken)
	if out := ctl(t, 0, with("backup", "list")...); !strings.Contains(out, "db-1 "+m.BackupID) {
		t.Fatalf("temporary credentials with AWS_SESSION_TOKEN: %s", out)
	}
	if out := ctl(t, 0, with("backup", "list")...); strings.Contains(out, tmp.SessionToken) || strings.Contains(out, tmp.SecretAccessKey) {
		t.Fatal("the output shows a credential")
	}
	t.Setenv("AWS_ACCESS_KEY_ID", miniotest.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", miniotest.SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	id := []string{"--key", keys + ".key", "--node", "db-1", "--id", m.BackupID, "--quiet"}
	if out := ctl(t, 0, with(append([]string{"backup", "verify"}, id...)...)...); !strings.Contains(out, "authentic") {
		t.Fatal(out)
	}
	restored := filepath.Join(dir, "restored")
	ctl(t, 0, with(append([]string{"backup", "restore", "--to", restored}, id...)...)...)
	diff, err := exec.Command("diff", "-r", "--no-dereference", src, restored).CombinedOutput()
	if err != nil {
		t.Fatalf("restored tree differs: %v\n%s", err, diff)
	}

	// A segment replaced by one of another backup.
	m2, err := backup.Write(ctx, strings.NewReader(strings.Repeat("x", 3<<20)), backup.Options{Public: pub, Store: st, Node: "db-1", Region: "eu-north-1",
		Source: backup.Source{Kind: "command", Name: "x"}, SegmentSize: 1 << 20, Staging: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := st.Get(ctx, m2.Prefix()+"/seg-00000001")
	data, _ := io.ReadAll(rc)
	rc.Close()
	st.Put(ctx, m2.Prefix()+"/seg-00000002", strings.NewReader(string(data)), int64(len(data)))
	id2 := []string{"--key", keys + ".key", "--node", "db-1", "--id", m2.BackupID, "--quiet"}
	if out := ctl(t, 1, with(append([]string{"backup", "verify"}, id2...)...)...); !strings.Contains(out, "holds segment 1") {
		t.Fatal(out)
	}
	to := filepath.Join(dir, "restore2")
	ctl(t, 1, with(append([]string{"backup", "restore", "--to", to}, id2...)...)...)
	if ents, _ := os.ReadDir(to); len(ents) != 0 {
		t.Fatalf("a failed restore left %v", ents)
	}
	// Wrong key.
	other := filepath.Join(dir, "other")
	ctl(t, 0, "backup", "keygen", "--out", other)
	if out := ctl(t, 1, with("backup", "verify", "--key", other+".key", "--node", "db-1", "--id", m.BackupID)...); !strings.Contains(out, "not among the private keys") {
		t.Fatal(out)
	}
}

// TestSpoolAndCommandFailures: a spool file stays until its backup is
// complete, across a store that is down; a failing command never makes a
// complete backup.
func TestSpoolAndCommandFailures(t *testing.T) {
	k, err := backup.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	srv := miniotest.Start(t, miniotest.Options{Region: "r1"})
	srv.MakeBucket(t, "bkp")
	ctx := context.Background()
	st, err := s3.New(ctx, s3.Options{Endpoint: srv.Endpoint(), AllowHTTP: true, Bucket: "bkp", Region: "r1", AccessKey: miniotest.AccessKey, SecretKey: miniotest.SecretKey, Attempts: 2, Backoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	o := backup.Options{Public: &k.PublicKey, Store: st, Node: "db-1", Region: "r1", SegmentSize: 1 << 20, Staging: t.TempDir()}
	spool := t.TempDir()
	for _, n := range []string{"000000010000000000000001", "000000010000000000000002"} {
		os.WriteFile(filepath.Join(spool, n), backup.TestPattern(100000), 0o600)
	}
	os.WriteFile(filepath.Join(spool, ".partial"), []byte("in progress"), 0o600)

	srv.Stop()
	res, err := backup.UploadSpool(ctx, spool, o)
	if err == nil || len(res.Uploaded) != 0 || len(res.Left) != 2 {
		t.Fatalf("store down: %+v %v", res, err)
	}
	if ents, _ := os.ReadDir(spool); len(ents) != 3 {
		t.Fatalf("spool lost files: %v", ents)
	}
	srv.Restart()
	res, err = backup.UploadSpool(ctx, spool, o)
	if err != nil || len(res.Uploaded) != 2 {
		t.Fatalf("store back: %+v %v", res, err)
	}
	if ents, _ := os.ReadDir(spool); len(ents) != 1 || ents[0].Name() != ".partial" {
		t.Fatalf("spool after upload: %v", ents)
	}
	kr, _ := backup.NewKeyring(k)
	for _, m := range res.Uploaded {
		got, err := backup.ReadManifest(ctx, st, "db-1", m.BackupID, kr)
		if err != nil || got.Source.Kind != "file" || got.PlaintextBytes != 100000 {
			t.Fatalf("%+v %v", got, err)
		}
	}

	// A command that writes, then fails.
	cmd := exec.Command("sh", "-c", "head -c 3000000 /dev/zero; echo broken >&2; exit 3")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil || cmd.Start() != nil {
		t.Fatal(err)
	}
	r := backup.Checked(out, func() error {
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	_, err = backup.Write(ctx, r, o)
	r.Close()
	if err == nil || !strings.Contains(err.Error(), "exit status 3: broken") {
		t.Fatalf("failing command: %v", err)
	}
	ls, _ := backup.List(ctx, st)
	var complete, incomplete int
	for _, l := range ls {
		if l.Complete {
			complete++
		} else {
			incomplete++
		}
	}
	if complete != 2 || incomplete != 1 {
		t.Fatalf("after the failed command: %d complete, %d incomplete", complete, incomplete)
	}
}
