package backup

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// Reading a source as root.
//
// Root reads directories that the workload owns, while the workload runs:
// between root listing a name and opening it, the workload can replace the
// file, a directory above it, or the source directory itself with a
// symbolic link to anything on the node, such as the node's configuration
// with its TLS key, and then read that file back through a restore. So no
// source is ever read by path. The source directory is opened once with no
// symbolic link anywhere in its path, and every entry below it is opened
// relative to its parent's descriptor, one name at a time, with
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS: a link is never followed, and what
// was opened is judged by fstat of the open descriptor, not by the stat of
// the listing. Symbolic links in a tree are recorded as links (their
// target, read from the link itself), as before.

// noLinks is the resolution of every open of a source entry: no symbolic
// link or /proc magic link at any step, nothing outside the directory the
// open starts from.
const noLinks = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// maxTreeDepth bounds how deep Tree descends: it holds one descriptor per
// level, and the workload decides the depth.
const maxTreeDepth = 256

// openat2 opens name with O_NOFOLLOW and O_CLOEXEC added, retrying the
// EINTR and EAGAIN (a concurrent rename seen during resolution) that
// openat2 may return.
func openat2(dirfd int, name string, flags int, resolve uint64) (int, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC), Resolve: resolve}
	for try := 0; ; try++ {
		fd, err := unix.Openat2(dirfd, name, &how)
		if (err == unix.EINTR || err == unix.EAGAIN) && try < 100 {
			continue
		}
		return fd, err
	}
}

// openSourceDir opens a source directory. The path comes from the config,
// but its last components lie on a volume the workload owns, so a symbolic
// link anywhere in it is refused rather than followed.
func openSourceDir(dir string) (*os.File, error) {
	fd, err := openat2(unix.AT_FDCWD, dir, unix.O_RDONLY|unix.O_DIRECTORY, unix.RESOLVE_NO_SYMLINKS|unix.RESOLVE_NO_MAGICLINKS)
	switch {
	case err == unix.ELOOP:
		return nil, fmt.Errorf("backup source %s: the path is or passes through a symbolic link, which a source may not (refused, not followed)", dir)
	case err == unix.ENOTDIR:
		return nil, fmt.Errorf("backup source %s: not a directory", dir)
	case err == unix.ENOSYS:
		return nil, fmt.Errorf("backup source %s: the kernel lacks openat2 (Linux 5.6), which reading a source safely needs", dir)
	case err != nil:
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// errChanged is what an entry gets that is not, once opened, what the
// listing said it was: the workload changed it during the backup.
func errChanged(p string, now string) error {
	return fmt.Errorf("%s changed while being backed up (it is now %s; not followed)", p, now)
}

// openEntry opens the entry name of the directory parent (whose path is
// p) as a regular file or a directory, as want says, and checks with fstat
// on the descriptor that it is one.
func openEntry(parent *os.File, name, p string, want fs.FileMode) (*os.File, fs.FileInfo, error) {
	flags := unix.O_RDONLY | unix.O_NONBLOCK | unix.O_NOCTTY // a FIFO swapped in must not block the open
	if want == fs.ModeDir {
		flags = unix.O_RDONLY | unix.O_DIRECTORY
	}
	fd, err := openat2(int(parent.Fd()), name, flags, noLinks)
	switch {
	case err == unix.ELOOP:
		return nil, nil, errChanged(p, "a symbolic link")
	case err == unix.EXDEV:
		return nil, nil, errChanged(p, "resolved outside the source directory")
	case err == unix.ENOTDIR:
		return nil, nil, errChanged(p, "not a directory")
	case err != nil:
		return nil, nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if info.Mode().Type() != want {
		f.Close()
		return nil, nil, errChanged(p, "a "+info.Mode().Type().String()+" file")
	}
	return f, info, nil
}

// readLink reads the target of the symbolic link name of parent from the
// link itself (an O_PATH descriptor of it), never what it points to.
func readLink(parent *os.File, name, p string) (string, fs.FileInfo, error) {
	fd, err := openat2(int(parent.Fd()), name, unix.O_PATH, noLinks)
	if err != nil {
		return "", nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", nil, err
	}
	if info.Mode().Type() != fs.ModeSymlink {
		return "", nil, errChanged(p, "not a symbolic link")
	}
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(fd, "", buf)
	if err != nil {
		return "", nil, &fs.PathError{Op: "readlink", Path: p, Err: err}
	}
	if n == len(buf) {
		return "", nil, fmt.Errorf("%s: symbolic link target longer than %d bytes", p, len(buf)-1)
	}
	return string(buf[:n]), info, nil
}

// Tree returns a tar stream of the directory dir: directories, regular
// files and symbolic links, in lexical order, with names relative to dir.
// Paths in skip (absolute, below dir) are left out with everything below
// them; sockets, devices and pipes are left out too. An error while
// walking ends the stream with that error, so the backup fails and gets no
// manifest; an entry that the workload swaps for another kind of file (a
// symbolic link above all) while it is being read is such an error.
func Tree(dir string, skip ...string) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		// A panic (the walker runs in PID1) ends the stream with an
		// error too, so the backup fails cleanly.
		err := safego.Call("backup tree walker", func() error {
			if testHookTree != nil {
				testHookTree()
			}
			t := &treeWriter{tw: tar.NewWriter(pw), skip: skip}
			root, err := openSourceDir(dir)
			if err != nil {
				return err
			}
			defer root.Close()
			if err := t.root(root, dir); err != nil {
				return err
			}
			return t.tw.Close()
		})
		pw.CloseWithError(err)
	}()
	return pr
}

// testHookTree, nil outside tests, runs at the start of Tree's goroutine.
var testHookTree func()

type treeWriter struct {
	tw   *tar.Writer
	skip []string
}

// root writes the source directory itself, as "./", then what it holds.
func (t *treeWriter) root(d *os.File, dir string) error {
	if slices.Contains(t.skip, dir) {
		return nil
	}
	info, err := d.Stat()
	if err != nil {
		return err
	}
	if err := t.header(info, "", "./"); err != nil {
		return err
	}
	return t.walk(d, dir, "", 0)
}

// walk writes the entries of the open directory d (path p, name rel in the
// stream) and, depth first, of the directories below it.
func (t *treeWriter) walk(d *os.File, p, rel string, depth int) error {
	if depth >= maxTreeDepth {
		return fmt.Errorf("%s: the tree is deeper than %d levels", p, maxTreeDepth)
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	slices.Sort(names)
	for _, name := range names {
		if err := t.entry(d, filepath.Join(p, name), joinRel(rel, name), name, depth); err != nil {
			return err
		}
	}
	return nil
}

func joinRel(rel, name string) string {
	if rel == "" {
		return name
	}
	return rel + "/" + name
}

// entry writes one entry of the directory d. The lstat here only decides
// how to open the entry (and to leave out sockets, devices and pipes);
// what goes into the stream comes from the opened descriptor.
func (t *treeWriter) entry(d *os.File, p, rel, name string, depth int) error {
	if slices.Contains(t.skip, p) {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		link, info, err := readLink(d, name, p)
		if err != nil {
			return err
		}
		return t.header(info, link, rel)
	case unix.S_IFDIR:
		sub, info, err := openEntry(d, name, p, fs.ModeDir)
		if err != nil {
			return err
		}
		defer sub.Close()
		if err := t.header(info, "", rel+"/"); err != nil {
			return err
		}
		return t.walk(sub, p, rel, depth+1)
	case unix.S_IFREG:
		f, info, err := openEntry(d, name, p, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := t.header(info, "", rel); err != nil {
			return err
		}
		n, err := io.Copy(t.tw, io.LimitReader(f, info.Size()))
		if err == nil && n != info.Size() {
			err = fmt.Errorf("%s shrank while being backed up (%d of %d bytes)", p, n, info.Size())
		}
		return err
	}
	return nil
}

func (t *treeWriter) header(info fs.FileInfo, link, name string) error {
	h, err := tar.FileInfoHeader(info, link)
	if err != nil {
		return err
	}
	h.Name = name
	h.Format = tar.FormatPAX
	return t.tw.WriteHeader(h)
}

// Checked returns r as a stream that, at its end, calls wait (which waits
// for the program writing r) and ends with wait's error instead of EOF when
// the program failed: a failed command never yields a complete backup.
// Closing the stream early closes r and still calls wait once.
func Checked(r io.ReadCloser, wait func() error) io.ReadCloser {
	return &checked{r: r, wait: wait}
}

type checked struct {
	r    io.ReadCloser
	wait func() error
	done bool
}

func (c *checked) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF && !c.done {
		c.done = true
		if werr := c.wait(); werr != nil {
			return n, fmt.Errorf("backup source: %w", werr)
		}
	}
	return n, err
}

func (c *checked) Close() error {
	err := c.r.Close()
	if !c.done {
		c.done = true
		c.wait()
	}
	return err
}

// SpoolResult reports one run over a spool directory.
type SpoolResult struct {
	Uploaded []*Manifest
	Left     []string // files still in the spool (not yet uploaded)
}

// UploadSpool backs up each regular file of dir (oldest name first) as its
// own backup and removes the file only once that backup's manifest is
// stored. On the first failure it stops: that file and the ones after it
// stay in the spool for the next run. Files whose names start with "." are
// in progress (the writer renames them when done) and are skipped. Like
// Tree, it reads and removes through descriptors, never by path: a file
// that is a symbolic link (or anything but a regular file) when opened is
// refused, a failure that stops the run like any other.
func UploadSpool(ctx context.Context, dir string, o Options) (SpoolResult, error) {
	var res SpoolResult
	d, err := openSourceDir(dir)
	if err != nil {
		return res, err
	}
	defer d.Close()
	ents, err := d.ReadDir(-1)
	if err != nil {
		return res, err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	for i, name := range names {
		p := filepath.Join(dir, name)
		f, _, err := openEntry(d, name, p, 0)
		if err != nil {
			res.Left = names[i:]
			return res, fmt.Errorf("spool file %s stays for the next run: %w", name, err)
		}
		oo := o
		oo.Source = Source{Kind: "file", Name: name}
		m, err := Write(ctx, f, oo)
		f.Close()
		if err != nil {
			res.Left = names[i:]
			return res, fmt.Errorf("spool file %s stays for the next run: %w", name, err)
		}
		res.Uploaded = append(res.Uploaded, m)
		if o.RemoveSpooled != nil {
			if err := o.RemoveSpooled(dir, name); err != nil {
				res.Left = names[i:]
				return res, fmt.Errorf("removing spool file %s: %w", name, err)
			}
			continue
		}
		if err := unix.Unlinkat(int(d.Fd()), name, 0); err != nil && err != unix.ENOENT {
			res.Left = names[i:]
			return res, &fs.PathError{Op: "remove", Path: p, Err: err}
		}
	}
	return res, nil
}

// RemoveSpoolFile removes the spool file name from dir once its backup is
// stored: PID1's side of Options.RemoveSpooled. Both come from the backup
// process, so they are checked: dir must be one of spools (the configured
// spool directories), reached without a symbolic link, and name a plain
// file name that is not in progress (no "/", not starting with "."). The
// removal goes through the directory's descriptor, so a path swapped in
// meanwhile cannot redirect it elsewhere.
func RemoveSpoolFile(spools []string, dir, name string) error {
	if !slices.Contains(spools, dir) {
		return fmt.Errorf("backup: %q is not a configured spool directory", dir)
	}
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") || len(name) > 255 {
		return fmt.Errorf("backup: %q is not the name of a spool file", name)
	}
	d, err := openSourceDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return &fs.PathError{Op: "stat", Path: filepath.Join(dir, name), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("backup: spool entry %s is not a regular file: not removed", filepath.Join(dir, name))
	}
	if err := unix.Unlinkat(int(d.Fd()), name, 0); err != nil && err != unix.ENOENT {
		return &fs.PathError{Op: "remove", Path: filepath.Join(dir, name), Err: err}
	}
	return nil
}
