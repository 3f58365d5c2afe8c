package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/objstore"
)

// swapper stands in for a hostile workload: it keeps exchanging an entry
// of a source directory (a file, a directory, or the source directory
// itself) with a symbolic link to a file or directory the workload must
// not be able to read through root. RENAME_EXCHANGE swaps two names
// atomically whatever their types, so at every instant the entry is either
// the genuine one or the link.
type swapper struct {
	pairs [][2]string // {entry in the source, its stand-in outside the source}
	reset func(entry, standIn string)
	swaps atomic.Int64
	stop  chan struct{}
	done  sync.WaitGroup
}

func (s *swapper) run() {
	s.stop = make(chan struct{})
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		for {
			for _, p := range s.pairs {
				select {
				case <-s.stop:
					return
				default:
				}
				if err := unix.Renameat2(unix.AT_FDCWD, p[0], unix.AT_FDCWD, p[1], unix.RENAME_EXCHANGE); err != nil {
					// The spool removed the entry after backing it up:
					// put a genuine one back and start over.
					s.reset(p[0], p[1])
					continue
				}
				s.swaps.Add(1)
			}
		}
	}()
}

func (s *swapper) halt() {
	close(s.stop)
	s.done.Wait()
}

// secretSetup makes, outside any source directory, a root-only file whose
// content is a random marker and a directory holding a copy of it. The
// marker is not part of any path, so finding it in a backup means the
// file's content was read.
func secretSetup(t *testing.T, base string) (marker []byte, file, dir string) {
	t.Helper()
	var r [16]byte
	rand.Read(r[:])
	marker = []byte("SECRET-" + hex.EncodeToString(r[:]))
	file = filepath.Join(base, "secret")
	dir = filepath.Join(base, "secretdir")
	if err := os.WriteFile(file, marker, 0o400); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "key"), marker, 0o400); err != nil {
		t.Fatal(err)
	}
	return marker, file, dir
}

// decoy is the genuine content of a swapped file: longer than the marker,
// so that a reader that takes the size from a stat of the genuine file and
// then reads the secret through the link gets all of the marker.
var decoy = bytes.Repeat([]byte("genuine workload data "), 8)

func putFile(t testing.TB, p string, b []byte) {
	tmp := filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".new") // a spool skips names starting with "."
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Error(err)
		return
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Error(err)
	}
}

func putLink(t testing.TB, target, p string) {
	os.RemoveAll(p)
	if err := os.Symlink(target, p); err != nil {
		t.Error(err)
	}
}

// TestBackupSourceSymlinkSwap: the workload owns the directories that
// root backs up, so it can swap a file, a directory, or the source
// directory itself for a symbolic link between root's listing and its
// open. Through many rounds of UploadSpool and Tree against a workload
// that does exactly that, the content of a file outside the source never
// reaches a backup.
func TestBackupSourceSymlinkSwap(t *testing.T) {
	const window = 3 * time.Second // per case; the old code leaked within a few rounds
	ctx := context.Background()
	k, _ := testKeys()
	kr := keyring(t, k)

	t.Run("spool file", func(t *testing.T) {
		base := t.TempDir()
		marker, secret, _ := secretSetup(t, base)
		spool, stage := filepath.Join(base, "spool"), filepath.Join(base, "stage")
		os.Mkdir(spool, 0o755)
		os.Mkdir(stage, 0o755)
		os.Mkdir(filepath.Join(base, "store"), 0o700)
		st, err := objstore.NewDir(filepath.Join(base, "store"))
		if err != nil {
			t.Fatal(err)
		}
		o := Options{Public: &k.PublicKey, Store: st, Node: "db-1", Region: "eu-north-1", SegmentSize: testSegment,
			ChunkLog: testChunkLog, Workers: 1, Staging: t.TempDir()}
		sw := &swapper{reset: func(entry, standIn string) {
			putLink(t, secret, standIn)
			putFile(t, entry, decoy)
		}}
		for _, n := range []string{"000000010000000000000001", "000000010000000000000002", "000000010000000000000003", "000000010000000000000004"} {
			e, s := filepath.Join(spool, n), filepath.Join(stage, n)
			sw.reset(e, s)
			sw.pairs = append(sw.pairs, [2]string{e, s})
		}
		sw.run()
		var uploaded []*Manifest
		var refused, rounds int
		for end := time.Now().Add(window); time.Now().Before(end); rounds++ {
			res, err := UploadSpool(ctx, spool, o)
			uploaded = append(uploaded, res.Uploaded...)
			if err != nil {
				refused++
			}
		}
		sw.halt()
		if sw.swaps.Load() == 0 || len(uploaded) == 0 {
			t.Fatalf("the test did not run: %d swaps, %d files uploaded", sw.swaps.Load(), len(uploaded))
		}
		leaked := 0
		for _, m := range uploaded {
			var out bytes.Buffer
			if err := Restore(ctx, st, m, kr, &out, 1, nil); err != nil {
				t.Fatalf("restore %s: %v", m.Source.Name, err)
			}
			if bytes.Contains(out.Bytes(), marker) {
				leaked++
			} else if !bytes.Equal(out.Bytes(), decoy) {
				t.Errorf("spool file %s restored to %q, neither the genuine content nor the secret", m.Source.Name, out.Bytes())
			}
		}
		t.Logf("%d rounds, %d swaps, %d files uploaded, %d rounds stopped by a refused file", rounds, sw.swaps.Load(), len(uploaded), refused)
		if leaked > 0 {
			t.Fatalf("%d of %d spool backups hold the content of %s, reached through a symbolic link swapped in by the workload", leaked, len(uploaded), secret)
		}
	})

	t.Run("tree file and directory", func(t *testing.T) {
		base := t.TempDir()
		marker, secret, secretDir := secretSetup(t, base)
		src, stage := filepath.Join(base, "data"), filepath.Join(base, "stage")
		os.MkdirAll(filepath.Join(src, "base", "1"), 0o755)
		os.Mkdir(stage, 0o755)
		os.WriteFile(filepath.Join(src, "PG_VERSION"), []byte("15\n"), 0o644)
		os.Symlink("PG_VERSION", filepath.Join(src, "link"))
		file, fileStandIn := filepath.Join(src, "base", "1", "16384"), filepath.Join(stage, "file")
		dir, dirStandIn := filepath.Join(src, "pg_wal"), filepath.Join(stage, "dir")
		putFile(t, file, decoy)
		putLink(t, secret, fileStandIn)
		os.Mkdir(dir, 0o755)
		putFile(t, filepath.Join(dir, "key"), decoy)
		putLink(t, secretDir, dirStandIn)
		sw := &swapper{pairs: [][2]string{{file, fileStandIn}, {dir, dirStandIn}}, reset: func(string, string) {
			t.Error("an entry of the tree vanished")
		}}
		sw.run()
		var leaked, failed, rounds, links int
		leakedAs := map[string]int{}
		for end := time.Now().Add(window); time.Now().Before(end); rounds++ {
			stream, err := io.ReadAll(Tree(src))
			if err != nil {
				failed++
			}
			if bytes.Contains(stream, marker) {
				leaked++
				leakedAs[leakedEntry(stream, marker)]++
				continue
			}
			links += countLinksTo(stream, secret, secretDir)
		}
		sw.halt()
		if sw.swaps.Load() == 0 || failed == rounds {
			t.Fatalf("the test did not run: %d swaps, %d of %d rounds failed", sw.swaps.Load(), failed, rounds)
		}
		t.Logf("%d rounds, %d swaps, %d rounds ended by a changed entry, %d swapped entries recorded as links", rounds, sw.swaps.Load(), failed, links)
		if leaked > 0 {
			t.Fatalf("%d of %d tree streams hold the content of a file outside the tree (as entries %v), reached through a symbolic link swapped in by the workload", leaked, rounds, leakedAs)
		}
	})

	t.Run("source directory itself", func(t *testing.T) {
		base := t.TempDir()
		marker, _, secretDir := secretSetup(t, base)
		vol := filepath.Join(base, "vol") // the workload owns the volume's root, so it can rename the source
		src, standIn := filepath.Join(vol, "data"), filepath.Join(vol, "elsewhere")
		os.MkdirAll(src, 0o755)
		putFile(t, filepath.Join(src, "key"), decoy)
		putLink(t, secretDir, standIn)
		os.Mkdir(filepath.Join(base, "store"), 0o700)
		st, err := objstore.NewDir(filepath.Join(base, "store"))
		if err != nil {
			t.Fatal(err)
		}
		o := Options{Public: &k.PublicKey, Store: st, Node: "db-1", Region: "eu-north-1", SegmentSize: testSegment,
			ChunkLog: testChunkLog, Workers: 1, Staging: t.TempDir()}
		genuine, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(genuine)
		sw := &swapper{pairs: [][2]string{{src, standIn}}, reset: func(string, string) {
			t.Error("the source directory vanished")
		}}
		sw.run()
		var leaked, rounds int
		var uploaded []*Manifest
		for end := time.Now().Add(window); time.Now().Before(end); rounds++ {
			stream, _ := io.ReadAll(Tree(src))
			if bytes.Contains(stream, marker) {
				leaked++
			}
			// The spool removes what it stored, so put the file back,
			// through the genuine directory wherever its name is now.
			if fd, err := unix.Openat(genuine, "key", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600); err == nil {
				unix.Write(fd, decoy)
				unix.Close(fd)
			} else if !errors.Is(err, unix.EEXIST) {
				t.Fatal(err)
			}
			res, _ := UploadSpool(ctx, src, o)
			uploaded = append(uploaded, res.Uploaded...)
		}
		sw.halt()
		for _, m := range uploaded {
			var out bytes.Buffer
			if err := Restore(ctx, st, m, kr, &out, 1, nil); err != nil {
				t.Fatalf("restore %s: %v", m.Source.Name, err)
			}
			if bytes.Contains(out.Bytes(), marker) {
				leaked++
			}
		}
		if _, err := os.Stat(filepath.Join(secretDir, "key")); err != nil {
			t.Errorf("the spool removed a file outside its directory through the swapped link: %v", err)
		}
		t.Logf("%d rounds, %d swaps, %d spool files uploaded", rounds, sw.swaps.Load(), len(uploaded))
		if leaked > 0 {
			t.Fatalf("%d backups hold the content of a file outside the source, reached through the source directory swapped for a symbolic link", leaked)
		}
	})
}

// leakedEntry names the tar entry whose content holds the marker.
func leakedEntry(stream, marker []byte) string {
	tr := tar.NewReader(bytes.NewReader(stream))
	for {
		h, err := tr.Next()
		if err != nil {
			return "an entry the tar reader cannot reach"
		}
		b, _ := io.ReadAll(tr)
		if bytes.Contains(b, marker) {
			return h.Name
		}
	}
}

// countLinksTo counts the entries of a tar stream recorded as symbolic
// links to the secret: a swapped entry may be backed up as what it is at
// that moment, a link, but never as the target's content.
func countLinksTo(stream []byte, targets ...string) int {
	n := 0
	tr := tar.NewReader(bytes.NewReader(stream))
	for {
		h, err := tr.Next()
		if err != nil {
			return n
		}
		if h.Typeflag == tar.TypeSymlink {
			for _, t := range targets {
				if h.Linkname == t && !strings.HasSuffix(h.Name, "link") {
					n++
				}
			}
		}
	}
}

// TestRemoveSpoolFile: PID1 removes a spool file for the backup process
// only in a configured spool directory, only by a plain name that is not
// in progress, and only a regular file.
func TestRemoveSpoolFile(t *testing.T) {
	root := t.TempDir()
	spool := filepath.Join(root, "spool")
	other := filepath.Join(root, "other")
	for _, d := range []string{spool, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "seg1"), []byte("x"), 0o644)
	}
	os.WriteFile(filepath.Join(spool, ".inprogress"), []byte("x"), 0o644)
	os.Mkdir(filepath.Join(spool, "adir"), 0o755)
	os.Symlink(filepath.Join(other, "seg1"), filepath.Join(spool, "link"))
	os.Symlink(other, filepath.Join(root, "spool-link"))
	spools := []string{spool, filepath.Join(root, "spool-link")}
	for _, c := range []struct{ dir, name, want string }{
		{other, "seg1", "not a configured spool directory"},
		{spool, "../other/seg1", "not the name of a spool file"},
		{spool, ".inprogress", "not the name of a spool file"},
		{spool, "", "not the name of a spool file"},
		{spool, "adir", "not a regular file"},
		{spool, "link", "not a regular file"},
		{filepath.Join(root, "spool-link"), "seg1", "backup source"}, // refused: a symbolic link (ELOOP or, with O_DIRECTORY, ENOTDIR)
	} {
		if err := RemoveSpoolFile(spools, c.dir, c.name); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("RemoveSpoolFile(%s, %q): %v, want an error with %q", c.dir, c.name, err, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(other, "seg1")); err != nil {
		t.Fatalf("a file outside the spool was removed: %v", err)
	}
	if err := RemoveSpoolFile(spools, spool, "seg1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(spool, "seg1")); !os.IsNotExist(err) {
		t.Fatalf("the spool file is still there: %v", err)
	}
	if err := RemoveSpoolFile(spools, spool, "seg1"); err != nil {
		t.Fatalf("removing a file already gone: %v", err)
	}
}
