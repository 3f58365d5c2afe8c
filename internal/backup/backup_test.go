package backup

import (
	"bytes"
	"context"
	"crypto/rsa"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/objstore"
)

const testSegment = 1 << 20

func newStore(t *testing.T) (*objstore.Dir, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := objstore.NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return st, dir
}

func writeBackup(t *testing.T, st objstore.Store, pub *rsa.PublicKey, plain []byte) *Manifest {
	t.Helper()
	m, err := Write(context.Background(), bytes.NewReader(plain), Options{
		Public: pub, Store: st, Node: "db-1", Region: "eu-north-1",
		Source: Source{Kind: "command", Name: "test"}, SegmentSize: testSegment,
		ChunkLog: testChunkLog, Workers: 2, Staging: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func restore(st objstore.Store, id string, kr Keyring) ([]byte, error) {
	ctx := context.Background()
	m, err := ReadManifest(ctx, st, "db-1", id, kr)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	err = Restore(ctx, st, m, kr, &out, 2, nil)
	return out.Bytes(), err
}

func TestBackupRoundTrip(t *testing.T) {
	k, _ := testKeys()
	kr := keyring(t, k)
	st, _ := newStore(t)
	for _, n := range []int{0, 1, testSegment - 1, testSegment, testSegment + 1, 2*testSegment + 3} {
		plain := TestPattern(n)
		m := writeBackup(t, st, &k.PublicKey, plain)
		segs := max(1, (n+testSegment-1)/testSegment)
		if len(m.Segments) != segs {
			t.Errorf("n=%d: %d segments, want %d", n, len(m.Segments), segs)
		}
		got, err := restore(st, m.BackupID, kr)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("n=%d: restore: %d bytes, %v", n, len(got), err)
		}
	}
	ls, err := List(context.Background(), st)
	if err != nil || len(ls) != 6 {
		t.Fatalf("List: %v %v", ls, err)
	}
	for _, l := range ls {
		if !l.Complete {
			t.Errorf("backup %s not listed as complete", l.ID)
		}
	}
}

// TestBackupTamper damages whole backups: each damage is refused with an
// error that names it.
func TestBackupTamper(t *testing.T) {
	k, other := testKeys()
	kr := keyring(t, k)
	plain := TestPattern(2*testSegment + 1000)
	ctx := context.Background()
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string, m, m2 *Manifest)
		want   string
	}{
		{"manifest missing", func(t *testing.T, dir string, m, _ *Manifest) {
			rm(t, dir, m, "manifest")
		}, "no manifest: the backup is incomplete"},
		{"segment missing", func(t *testing.T, dir string, m, _ *Manifest) {
			rm(t, dir, m, "seg-00000001")
		}, "segment 1: objstore: no such object"},
		{"segments swapped", func(t *testing.T, dir string, m, _ *Manifest) {
			a, b := obj(dir, m, "seg-00000000"), obj(dir, m, "seg-00000001")
			os.Rename(a, a+".x")
			os.Rename(b, a)
			os.Rename(a+".x", b)
		}, "holds segment 1 of backup"},
		{"segment duplicated", func(t *testing.T, dir string, m, _ *Manifest) {
			cp(t, obj(dir, m, "seg-00000000"), obj(dir, m, "seg-00000001"))
		}, "holds segment 0 of backup"},
		{"segment from another backup", func(t *testing.T, dir string, m, m2 *Manifest) {
			cp(t, obj(dir, m2, "seg-00000001"), obj(dir, m, "seg-00000001"))
		}, "not segment 1 of this backup"},
		{"manifest from another backup", func(t *testing.T, dir string, m, m2 *Manifest) {
			cp(t, obj(dir, m2, "manifest"), obj(dir, m, "manifest"))
		}, "the manifest object belongs to backup"},
		{"segment truncated", func(t *testing.T, dir string, m, _ *Manifest) {
			os.Truncate(obj(dir, m, "seg-00000002"), 460)
		}, "segment 2: backup: chunk 0: the segment ends inside this chunk's tag"},
		{"segment with trailing bytes", func(t *testing.T, dir string, m, _ *Manifest) {
			f, _ := os.OpenFile(obj(dir, m, "seg-00000000"), os.O_APPEND|os.O_WRONLY, 0)
			f.Write([]byte("x"))
			f.Close()
		}, "segment 0: backup: chunk"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, dir := newStore(t)
			m := writeBackup(t, st, &k.PublicKey, plain)
			m2 := writeBackup(t, st, &k.PublicKey, plain)
			tc.damage(t, dir, m, m2)
			got, err := restore(st, m.BackupID, kr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if !bytes.Equal(got, plain[:len(got)]) {
				t.Fatal("released bytes that are not the plaintext")
			}
		})
	}
	t.Run("incomplete is not listed as complete", func(t *testing.T) {
		st, dir := newStore(t)
		m := writeBackup(t, st, &k.PublicKey, plain)
		rm(t, dir, m, "manifest")
		ls, err := List(ctx, st)
		if err != nil || len(ls) != 1 || ls[0].Complete {
			t.Fatalf("%+v %v", ls, err)
		}
		n, err := Prune(ctx, st, "db-1", "")
		if err != nil || n != 3 {
			t.Fatalf("Prune removed %d objects: %v", n, err)
		}
	})
	t.Run("key rotation", func(t *testing.T) {
		st, _ := newStore(t)
		old := writeBackup(t, st, &k.PublicKey, plain[:100])
		cur := writeBackup(t, st, &other.PublicKey, plain[:200])
		both := keyring(t, k, other)
		for _, c := range []struct {
			m *Manifest
			n int
		}{{old, 100}, {cur, 200}} {
			got, err := restore(st, c.m.BackupID, both)
			if err != nil || len(got) != c.n {
				t.Fatalf("restore after rotation: %d bytes, %v", len(got), err)
			}
		}
		if _, err := restore(st, cur.BackupID, kr); err == nil || !strings.Contains(err.Error(), "not among the private keys") {
			t.Fatalf("the old key alone on a new backup: %v", err)
		}
	})
}

func obj(dir string, m *Manifest, name string) string {
	return filepath.Join(dir, m.Node, m.BackupID, name)
}

func rm(t *testing.T, dir string, m *Manifest, name string) {
	if err := os.Remove(obj(dir, m, name)); err != nil {
		t.Fatal(err)
	}
}

func cp(t *testing.T, from, to string) {
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
