package backup

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
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
