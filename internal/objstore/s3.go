package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Options configure an S3 bucket.
type S3Options struct {
	// Endpoint is the service's URL: https://host[:port], or http:// when
	// AllowHTTP is set (test servers on a private bridge; the access key
	// then crosses the network in the clear, the backup content never
	// does).
	Endpoint  string
	AllowHTTP bool
	Bucket    string
	Prefix    string // prepended to every object name, may be empty
	// Region is the node's region: the bucket must be there.
	Region    string
	AccessKey string
	SecretKey string
	// PartSize is the multipart upload part size, at least 5 MiB.
	PartSize uint64
	// Attempts and Backoff govern retries of whole operations, on top of
	// the client's own retries of single requests.
	Attempts int
	Backoff  time.Duration
	// Transport, when set, carries the requests (tests dial inside a
	// network namespace).
	Transport http.RoundTripper
}

// S3 is a bucket in the node's region.
type S3 struct {
	c *minio.Client
	o S3Options
}

// RegionError says the bucket lies outside the node's region.
type RegionError struct{ Bucket, BucketRegion, NodeRegion string }

func (e *RegionError) Error() string {
	return fmt.Sprintf("objstore: bucket %q is in region %q, but this node is in region %q: backups stay in the node's region, so the bucket is refused", e.Bucket, e.BucketRegion, e.NodeRegion)
}

// NewS3 connects to the bucket and checks that it is in o.Region.
func NewS3(ctx context.Context, o S3Options) (*S3, error) {
	u, err := url.Parse(o.Endpoint)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("objstore: endpoint %q is not a URL of the form https://host[:port]", o.Endpoint)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && o.AllowHTTP:
	case u.Scheme == "http":
		return nil, fmt.Errorf("objstore: endpoint %q is plain http; set allow_http to accept that", o.Endpoint)
	default:
		return nil, fmt.Errorf("objstore: endpoint %q: scheme must be https", o.Endpoint)
	}
	if o.Bucket == "" {
		return nil, errors.New("objstore: no bucket named")
	}
	if o.Region == "" {
		return nil, errors.New("objstore: the node's region is not set")
	}
	if o.PartSize == 0 {
		o.PartSize = 16 << 20
	}
	if o.PartSize < 5<<20 {
		return nil, fmt.Errorf("objstore: part size %d is below S3's minimum of 5 MiB", o.PartSize)
	}
	if o.Attempts == 0 {
		o.Attempts = 6
	}
	if o.Backoff == 0 {
		o.Backoff = time.Second
	}
	o.Prefix = strings.Trim(o.Prefix, "/")
	c, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(o.AccessKey, o.SecretKey, ""),
		Secure:       u.Scheme == "https",
		Transport:    o.Transport,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		return nil, fmt.Errorf("objstore: %w", err)
	}
	s := &S3{c: c, o: o}
	var loc string
	err = Retry(ctx, o.Attempts, o.Backoff, func() error {
		var err error
		loc, err = c.GetBucketLocation(ctx, o.Bucket)
		return s.classify(err)
	})
	if err != nil {
		return nil, fmt.Errorf("objstore: bucket %q at %s: %w", o.Bucket, o.Endpoint, err)
	}
	if loc == "" {
		loc = "us-east-1" // S3 reports its first region as empty
	}
	if loc != o.Region {
		return nil, &RegionError{Bucket: o.Bucket, BucketRegion: loc, NodeRegion: o.Region}
	}
	return s, nil
}

func (s *S3) String() string {
	return fmt.Sprintf("s3 %s bucket %s (%s)", s.o.Endpoint, s.o.Bucket, s.o.Region)
}

func (s *S3) key(name string) (string, error) {
	if err := CheckName(name); err != nil {
		return "", err
	}
	if s.o.Prefix == "" {
		return name, nil
	}
	return s.o.Prefix + "/" + name, nil
}

// classify marks the errors a retry cannot fix.
func (s *S3) classify(err error) error {
	if err == nil {
		return nil
	}
	switch minio.ToErrorResponse(err).Code {
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "NoSuchKey", "InvalidBucketName":
		return permanent{err}
	}
	return err
}

// Put uploads with multipart parts of PartSize, each with a Content-MD5
// the server checks, and then checks the stored size.
func (s *S3) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	return Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			return permanent{err}
		}
		info, err := s.c.PutObject(ctx, s.o.Bucket, key, r, size, minio.PutObjectOptions{
			PartSize:       s.o.PartSize,
			SendContentMd5: true,
			ContentType:    "application/octet-stream",
		})
		if err != nil {
			return s.classify(err)
		}
		if info.Size != size {
			return fmt.Errorf("objstore: %s stored %d bytes of %d", name, info.Size, size)
		}
		st, err := s.c.StatObject(ctx, s.o.Bucket, key, minio.StatObjectOptions{})
		if err != nil {
			return s.classify(err)
		}
		if st.Size != size {
			return fmt.Errorf("objstore: %s holds %d bytes after upload, not %d", name, st.Size, size)
		}
		return nil
	})
}

func (s *S3) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	key, err := s.key(name)
	if err != nil {
		return nil, err
	}
	var obj *minio.Object
	err = Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		var err error
		obj, err = s.c.GetObject(ctx, s.o.Bucket, key, minio.GetObjectOptions{})
		if err != nil {
			return s.classify(err)
		}
		// GetObject is lazy: Stat makes the request.
		if _, err := obj.Stat(); err != nil {
			obj.Close()
			return s.classify(err)
		}
		return nil
	})
	if err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		return nil, err
	}
	return obj, nil
}

func (s *S3) List(ctx context.Context, prefix string) ([]Object, error) {
	full := prefix
	if s.o.Prefix != "" {
		full = s.o.Prefix + "/" + prefix
	}
	var out []Object
	err := Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		out = out[:0]
		for o := range s.c.ListObjects(ctx, s.o.Bucket, minio.ListObjectsOptions{Prefix: full, Recursive: true}) {
			if o.Err != nil {
				return s.classify(o.Err)
			}
			name := o.Key
			if s.o.Prefix != "" {
				name = strings.TrimPrefix(name, s.o.Prefix+"/")
			}
			out = append(out, Object{Name: name, Size: o.Size})
		}
		return nil
	})
	return out, err
}

func (s *S3) Delete(ctx context.Context, name string) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	return Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		return s.classify(s.c.RemoveObject(ctx, s.o.Bucket, key, minio.RemoveObjectOptions{}))
	})
}
