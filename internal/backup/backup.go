package backup

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/objstore"
)

// Source says what a backup holds.
type Source struct {
	Kind string `json:"kind"` // tree, command or file
	Name string `json:"name"`
}

// SegmentEntry is one segment in a manifest.
type SegmentEntry struct {
	Index            uint32 `json:"index"`
	Object           string `json:"object"`
	PlaintextBytes   int64  `json:"plaintext_bytes"`
	CiphertextBytes  int64  `json:"ciphertext_bytes"`
	CiphertextSHA256 string `json:"ciphertext_sha256"`
}

// Manifest describes a complete backup; it is written last.
type Manifest struct {
	Format          int            `json:"format"`
	BackupID        string         `json:"backup_id"`
	Node            string         `json:"node"`
	Region          string         `json:"region"`
	Created         time.Time      `json:"created"`
	Source          Source         `json:"source"`
	KeyID           string         `json:"key_id"`
	ChunkSize       int            `json:"chunk_size"`
	SegmentSize     int64          `json:"segment_size"`
	PlaintextBytes  int64          `json:"plaintext_bytes"`
	PlaintextSHA256 string         `json:"plaintext_sha256"`
	Segments        []SegmentEntry `json:"segments"`
}

// Prefix is where the backup's objects live in the store.
func (m *Manifest) Prefix() string { return m.Node + "/" + m.BackupID }

// Options configure Write.
type Options struct {
	Public      *rsa.PublicKey
	Store       objstore.Store
	Node        string
	Region      string
	Source      Source
	SegmentSize int64 // plaintext bytes per segment
	ChunkLog    uint8 // 0 means DefaultChunkLog
	Workers     int   // < 1: one per CPU
	// Staging is a directory for each sealed segment before its upload,
	// so that a failed upload can be retried from the same bytes.
	Staging string
	// Progress, when set, is called with the plaintext bytes done.
	Progress func(done int64)
	// RemoveSpooled, when set, removes a spool file once its backup is
	// stored, instead of UploadSpool unlinking it itself: the backup
	// process may read the workload's files but not change them, so it
	// asks PID1 (RemoveSpoolFile).
	RemoveSpooled func(dir, name string) error
}

func (o *Options) check() error {
	switch {
	case o.Public == nil:
		return errors.New("backup: no public key")
	case o.Store == nil:
		return errors.New("backup: no object store")
	case o.Node == "" || strings.ContainsAny(o.Node, "/\\") || o.Node == "." || o.Node == "..":
		return fmt.Errorf("backup: node name %q cannot name a prefix", o.Node)
	case o.SegmentSize < 1<<20:
		return fmt.Errorf("backup: segment size %d is below 1 MiB", o.SegmentSize)
	case o.Staging == "":
		return errors.New("backup: no staging directory")
	}
	if o.ChunkLog == 0 {
		o.ChunkLog = DefaultChunkLog
	}
	return nil
}

// Write reads r to its end and stores it as one backup: segments, then the
// manifest. If it fails, no manifest exists, so the backup is incomplete
// and is never listed as complete; the segments already stored stay, to be
// removed by Prune.
func Write(ctx context.Context, r io.Reader, o Options) (*Manifest, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	keyID, err := IDOf(o.Public)
	if err != nil {
		return nil, err
	}
	var id BackupID
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	m := &Manifest{
		Format: 1, BackupID: id.String(), Node: o.Node, Region: o.Region,
		Created: time.Now().UTC().Truncate(time.Second), Source: o.Source,
		KeyID: keyID.String(), ChunkSize: 1 << o.ChunkLog, SegmentSize: o.SegmentSize,
	}
	whole := sha256.New()
	src := io.TeeReader(r, whole)
	for index := uint32(0); ; index++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		name := fmt.Sprintf("seg-%08d", index)
		h := Header{Kind: KindData, ChunkLog: o.ChunkLog, Backup: id, Index: index}
		e, more, err := putSegment(ctx, o, m.Prefix()+"/"+name, h, io.LimitReader(src, o.SegmentSize), index > 0)
		if err != nil {
			return nil, fmt.Errorf("backup %s: segment %d: %w", m.BackupID, index, err)
		}
		if !more {
			break // the stream ended exactly at the last segment's end
		}
		e.Object = name
		m.Segments = append(m.Segments, e)
		m.PlaintextBytes += e.PlaintextBytes
		if o.Progress != nil {
			o.Progress(m.PlaintextBytes)
		}
		if e.PlaintextBytes < o.SegmentSize {
			break
		}
	}
	m.PlaintextSHA256 = hex.EncodeToString(whole.Sum(nil))
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	h := Header{Kind: KindManifest, ChunkLog: o.ChunkLog, Backup: id, Index: ManifestIndex}
	if _, _, err := putSegment(ctx, o, m.Prefix()+"/manifest", h, bytes.NewReader(body), false); err != nil {
		return nil, fmt.Errorf("backup %s: manifest: %w", m.BackupID, err)
	}
	return m, nil
}

// stagingFile opens an unnamed file (O_TMPFILE) in the staging directory,
// resolved with no symbolic link followed. The staging directory lies in a
// volume the workload owns, which could swap a path component for a link
// between two rounds and make root create and remove files where it
// chose; an unnamed file needs no removal and leaves nothing behind when
// the node dies mid-upload.
func stagingFile(dir string) (*os.File, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, dir, &unix.OpenHow{
		Flags:   unix.O_TMPFILE | unix.O_RDWR | unix.O_CLOEXEC,
		Mode:    0o600,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, fmt.Errorf("backup: staging file in %s: %w", dir, err)
	}
	return os.NewFile(uintptr(fd), dir+"/(staging)"), nil
}

// putSegment seals r into a staging file and uploads it. If skipEmpty is
// set and r turns out empty, nothing is stored and more is false.
func putSegment(ctx context.Context, o Options, name string, h Header, r io.Reader, skipEmpty bool) (e SegmentEntry, more bool, err error) {
	f, err := stagingFile(o.Staging)
	if err != nil {
		return e, false, err
	}
	defer f.Close()
	sum := sha256.New()
	w, err := NewSegmentWriter(io.MultiWriter(f, sum), o.Public, h, o.Workers)
	if err != nil {
		return e, false, err
	}
	n, err := io.Copy(w, r)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return e, false, err
	}
	if n == 0 && skipEmpty {
		return e, false, nil
	}
	if err := o.Store.Put(ctx, name, f, w.Written()); err != nil {
		return e, false, err
	}
	return SegmentEntry{Index: h.Index, PlaintextBytes: n, CiphertextBytes: w.Written(), CiphertextSHA256: hex.EncodeToString(sum.Sum(nil))}, true, nil
}

// Listing is one backup found in a store.
type Listing struct {
	Node, ID string
	Complete bool  // it has a manifest
	Bytes    int64 // stored bytes, manifest included
	Objects  int
}

// List finds the backups under a store, complete or not. It needs no key:
// completeness is the presence of the manifest; ReadManifest checks it.
func List(ctx context.Context, st objstore.Store) ([]Listing, error) {
	objs, err := st.List(ctx, "")
	if err != nil {
		return nil, err
	}
	var out []Listing
	idx := map[string]int{}
	for _, o := range objs {
		parts := strings.Split(o.Name, "/")
		if len(parts) != 3 {
			continue
		}
		if _, err := ParseBackupID(parts[1]); err != nil {
			continue
		}
		k := parts[0] + "/" + parts[1]
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, Listing{Node: parts[0], ID: parts[1]})
		}
		out[i].Objects++
		out[i].Bytes += o.Size
		if parts[2] == "manifest" {
			out[i].Complete = true
		}
	}
	return out, nil
}

// ReadManifest fetches, authenticates and checks the manifest of a backup.
func ReadManifest(ctx context.Context, st objstore.Store, node, id string, keys Keyring) (*Manifest, error) {
	want, err := ParseBackupID(id)
	if err != nil {
		return nil, err
	}
	prefix := path.Join(node, id)
	rc, err := st.Get(ctx, prefix+"/manifest")
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, fmt.Errorf("backup %s: no manifest: the backup is incomplete", id)
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return readManifest(rc, node, id, want, func(r io.Reader) (*SegmentReader, error) { return OpenSegment(r, keys, 1) })
}

// readManifest is ReadManifest from the manifest object's bytes on, with
// open turning them into a segment reader (OpenSegment with the keys; the
// fuzz tests open with a fixed secret instead, without RSA).
func readManifest(obj io.Reader, node, id string, want BackupID, open func(io.Reader) (*SegmentReader, error)) (*Manifest, error) {
	r, err := open(obj)
	if err != nil {
		return nil, fmt.Errorf("backup %s: manifest: %w", id, err)
	}
	defer r.Close()
	h := r.Header()
	if h.Kind != KindManifest || h.Backup != want {
		return nil, fmt.Errorf("backup %s: the manifest object belongs to backup %s (kind %d)", id, h.Backup, h.Kind)
	}
	body, err := io.ReadAll(io.LimitReader(r, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("backup %s: manifest: %w", id, err)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("backup %s: manifest does not parse: %w", id, err)
	}
	switch {
	case m.Format != 1:
		return nil, fmt.Errorf("backup %s: manifest format %d is not 1", id, m.Format)
	case m.BackupID != id || m.Node != node:
		return nil, fmt.Errorf("backup %s: manifest names backup %s of node %s", id, m.BackupID, m.Node)
	case m.KeyID != h.KeyID.String():
		return nil, fmt.Errorf("backup %s: manifest names key %s but is sealed for %s", id, m.KeyID, h.KeyID)
	case len(m.Segments) == 0:
		return nil, fmt.Errorf("backup %s: manifest lists no segment", id)
	}
	var total int64
	for i, s := range m.Segments {
		if s.Index != uint32(i) || s.Object != fmt.Sprintf("seg-%08d", i) {
			return nil, fmt.Errorf("backup %s: manifest entry %d names segment %d (%s)", id, i, s.Index, s.Object)
		}
		total += s.PlaintextBytes
	}
	if total != m.PlaintextBytes {
		return nil, fmt.Errorf("backup %s: manifest segments hold %d bytes, but it says %d", id, total, m.PlaintextBytes)
	}
	return &m, nil
}

// Restore writes a backup's plaintext to w, segment by segment. Every chunk
// is verified before any byte of it reaches w; each segment's header, size
// and digest are checked against the manifest, and the whole plaintext's
// digest at the end. Verify is Restore to io.Discard.
func Restore(ctx context.Context, st objstore.Store, m *Manifest, keys Keyring, w io.Writer, workers int, progress func(done int64)) error {
	id, err := ParseBackupID(m.BackupID)
	if err != nil {
		return err
	}
	whole := sha256.New()
	var done int64
	for _, s := range m.Segments {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := restoreSegment(ctx, st, m, s, id, keys, io.MultiWriter(w, whole), workers)
		if err != nil {
			return fmt.Errorf("backup %s: segment %d: %w", m.BackupID, s.Index, err)
		}
		done += n
		if progress != nil {
			progress(done)
		}
	}
	if got := hex.EncodeToString(whole.Sum(nil)); got != m.PlaintextSHA256 {
		return fmt.Errorf("backup %s: the restored plaintext's SHA-256 %s is not the manifest's %s", m.BackupID, got, m.PlaintextSHA256)
	}
	return nil
}

func restoreSegment(ctx context.Context, st objstore.Store, m *Manifest, s SegmentEntry, id BackupID, keys Keyring, w io.Writer, workers int) (int64, error) {
	rc, err := st.Get(ctx, m.Prefix()+"/"+s.Object)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	sum := &countingHash{h: sha256.New()}
	r, err := OpenSegment(io.TeeReader(rc, sum), keys, workers)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	h := r.Header()
	if h.Kind != KindData || h.Backup != id || h.Index != s.Index {
		return 0, fmt.Errorf("object %s holds segment %d of backup %s, not segment %d of this backup", s.Object, h.Index, h.Backup, s.Index)
	}
	n, err := io.Copy(w, r)
	if err != nil {
		return n, err
	}
	if sum.n != s.CiphertextBytes || hex.EncodeToString(sum.h.Sum(nil)) != s.CiphertextSHA256 {
		return n, fmt.Errorf("object %s (%d bytes) is not the segment the manifest records (%d bytes, sha256 %s)", s.Object, sum.n, s.CiphertextBytes, s.CiphertextSHA256)
	}
	if n != s.PlaintextBytes {
		return n, fmt.Errorf("object %s holds %d plaintext bytes, the manifest says %d", s.Object, n, s.PlaintextBytes)
	}
	return n, nil
}

type countingHash struct {
	h hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

// Prune removes the objects of incomplete backups of a node, except the
// one named keep (a backup in progress).
func Prune(ctx context.Context, st objstore.Store, node, keep string) (int, error) {
	ls, err := List(ctx, st)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range ls {
		if l.Node != node || l.Complete || l.ID == keep {
			continue
		}
		objs, err := st.List(ctx, l.Node+"/"+l.ID+"/")
		if err != nil {
			return n, err
		}
		for _, o := range objs {
			if err := st.Delete(ctx, o.Name); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}
