package backup

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Tree returns a tar stream of the directory dir: directories, regular
// files and symbolic links, in lexical order, with names relative to dir.
// Paths in skip (absolute, below dir) are left out with everything below
// them; sockets, devices and pipes are left out too. An error while
// walking ends the stream with that error, so the backup fails and gets no
// manifest.
func Tree(dir string, skip ...string) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if slices.Contains(skip, p) {
				if e.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			info, err := e.Info()
			if err != nil {
				return err
			}
			var link string
			switch {
			case info.Mode().IsRegular(), info.IsDir():
			case info.Mode()&fs.ModeSymlink != 0:
				if link, err = os.Readlink(p); err != nil {
					return err
				}
			default:
				return nil
			}
			h, err := tar.FileInfoHeader(info, link)
			if err != nil {
				return err
			}
			h.Name = filepath.ToSlash(rel)
			if info.IsDir() {
				h.Name += "/"
			}
			h.Format = tar.FormatPAX
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			if !info.Mode().IsRegular() {
				return nil
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			n, err := io.Copy(tw, io.LimitReader(f, info.Size()))
			if err == nil && n != info.Size() {
				err = fmt.Errorf("%s shrank while being backed up (%d of %d bytes)", p, n, info.Size())
			}
			return err
		})
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr
}

// Command runs argv and returns its standard output as a stream. The
// stream ends with an error, not EOF, if the command fails, so a failed
// command never yields a complete backup. cmd may set the process
// attributes (user, environment) before the start; stderr is kept for the
// error.
func Command(ctx context.Context, cmd *exec.Cmd) (io.ReadCloser, error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	if cmd.Stderr == nil {
		cmd.Stderr = &limited{w: &stderr, n: 4096}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &commandReader{r: out, cmd: cmd, stderr: &stderr}, nil
}

type commandReader struct {
	r      io.Reader
	cmd    *exec.Cmd
	stderr *strings.Builder
	done   bool
}

func (c *commandReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF && !c.done {
		c.done = true
		if werr := c.cmd.Wait(); werr != nil {
			return n, fmt.Errorf("backup source %s: %w: %s", c.cmd.Path, werr, strings.TrimSpace(c.stderr.String()))
		}
	}
	return n, err
}

func (c *commandReader) Close() error {
	if !c.done {
		c.done = true
		c.cmd.Process.Kill()
		c.cmd.Wait()
	}
	return nil
}

type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
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
// in progress (the writer renames them when done) and are skipped.
func UploadSpool(ctx context.Context, dir string, o Options) (SpoolResult, error) {
	var res SpoolResult
	ents, err := os.ReadDir(dir)
	if err != nil {
		return res, err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	for i, name := range names {
		p := filepath.Join(dir, name)
		f, err := os.Open(p)
		if err != nil {
			res.Left = names[i:]
			return res, err
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
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			res.Left = names[i:]
			return res, err
		}
	}
	return res, nil
}
