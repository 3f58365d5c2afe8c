package backup

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStagingNoSymlinks: the staging directory lies in a volume the
// workload owns; a staging path through a symbolic link (swapped in by the
// workload) is refused instead of followed, and a backup through a real
// staging directory leaves nothing in it.
func TestStagingNoSymlinks(t *testing.T) {
	k, _ := testKeys()
	st, _ := newStore(t)
	elsewhere := t.TempDir()
	vol := t.TempDir()
	link := filepath.Join(vol, "staging")
	if err := os.Symlink(elsewhere, link); err != nil {
		t.Fatal(err)
	}
	o := Options{Public: &k.PublicKey, Store: st, Node: "db-1", Region: "eu-north-1",
		Source: Source{Kind: "command", Name: "test"}, SegmentSize: testSegment, ChunkLog: testChunkLog, Workers: 2, Staging: link}
	_, err := Write(context.Background(), bytes.NewReader(bytes.Repeat([]byte("x"), 3<<20)), o)
	if err == nil || !strings.Contains(err.Error(), "staging") {
		t.Errorf("a backup staged through a symbolic link: %v; want it refused naming the staging directory", err)
	}
	real := filepath.Join(vol, "real")
	os.Mkdir(real, 0o700)
	o.Staging = real
	if _, err := Write(context.Background(), bytes.NewReader(bytes.Repeat([]byte("x"), 3<<20)), o); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{real, elsewhere} {
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Errorf("%s holds %d entries after the backup", d, len(ents))
		}
	}
}
