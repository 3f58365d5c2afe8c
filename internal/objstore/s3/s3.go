// Package s3 is the object store of the backups in an S3 bucket in the
// node's region, on the maintained minio-go client: it builds the
// requests, does multipart uploads with flexible checksums, reads
// listings, and fetches credentials (static keys with an optional STS
// session token, or an EC2 instance role through IMDSv2). This package
// adds what the backups need on top: the bucket must be in the node's
// region (asked once, then every request is signed for that region and
// never sent elsewhere), an expected bucket owner signed into every
// request, retries of whole operations with backoff, a size check after
// each upload, per-request I/O timeouts, and errors and names that never
// show credentials.
//
// It is its own package so that internal/objstore, which PID1 imports,
// does not link minio-go.
package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/bulwarkvm/bulwark/internal/objstore"
)

// Options configure a bucket.
type Options struct {
	// Endpoint is the service's URL: https://host[:port], or http:// when
	// AllowHTTP is set (test servers on a private bridge; the credentials'
	// signatures then cross the network in the clear, the backup content
	// never does: it is encrypted before it reaches the store).
	Endpoint  string
	AllowHTTP bool
	Bucket    string
	Prefix    string // prepended to every object name, may be empty
	// Region is the node's region: the bucket must be there, and every
	// request is signed for it.
	Region string
	// Static credentials: an access key and a secret key, and with
	// temporary (STS) credentials their session token.
	AccessKey, SecretKey, SessionToken string
	// InstanceRole takes the credentials of the instance's role from the
	// EC2 metadata service (IMDSv2: a token first, then the role's
	// credentials, renewed before they expire) instead of static keys,
	// which must then be empty.
	InstanceRole bool
	// MetadataEndpoint is the metadata service's URL; default
	// http://169.254.169.254 (tests use a loopback stand-in).
	MetadataEndpoint string
	// VirtualHosted puts the bucket in the host name
	// (https://bucket.host/key) instead of the path (https://host/bucket/key,
	// the default, which MinIO and most S3-compatible services need).
	VirtualHosted bool
	// ExpectedBucketOwner, when set, is the 12-digit AWS account id that
	// must own the bucket: it is sent, signed, as
	// x-amz-expected-bucket-owner on every request, and AWS refuses a
	// request to a bucket that another account owns.
	ExpectedBucketOwner string
	// PartSize is the multipart upload part size, at least 5 MiB; an
	// object up to that size goes in one request.
	PartSize uint64
	// Attempts and Backoff govern retries of whole operations: a failed
	// upload starts again from its first part (a segment is at most a few
	// tens of MiB). The defaults, 6 attempts with waits doubling from 1 s,
	// ride out about half a minute of outage. The client's own retries are
	// off, so that these are the only ones.
	Attempts int
	Backoff  time.Duration
	// Timeout bounds every wait on the network within a request: to
	// connect, for the TLS handshake, for each read or write of a
	// connection, and for the answer's header. A server that stops
	// answering mid-request fails the attempt after Timeout instead of
	// holding the round. Default 2 minutes.
	Timeout time.Duration
	// RootCAs are the trust anchors of an https endpoint; nil means the
	// system's (a host; the node has none and always sets them).
	RootCAs *x509.CertPool
	// DialContext, when set, makes the connections (tests dial inside a
	// network namespace, or route a bucket's host name to loopback).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Store is a bucket in the node's region. It implements objstore.Store.
type Store struct {
	o    Options
	base *url.URL // the endpoint: scheme and host
	c    *minio.Client
	// hc carries the requests this package makes itself (the bucket's
	// region), through the same signing transport as the client's.
	hc *http.Client
	// listPage, when set, asks for listings of at most that many keys
	// per answer (tests of the continuation).
	listPage int
}

var _ objstore.Store = (*Store)(nil)

// RegionError says the bucket lies outside the node's region.
type RegionError struct{ Bucket, BucketRegion, NodeRegion string }

func (e *RegionError) Error() string {
	return fmt.Sprintf("objstore: bucket %q is in region %q, but this node is in region %q: backups stay in the node's region, so the bucket is refused", e.Bucket, e.BucketRegion, e.NodeRegion)
}

// ownerRE is an AWS account id.
var ownerRE = regexp.MustCompile(`^[0-9]{12}$`)

// check fills in the defaults of o and refuses what cannot work; it
// returns the endpoint's URL.
func (o *Options) check() (*url.URL, error) {
	u, err := endpointURL(o.Endpoint)
	if err != nil {
		return nil, err
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && o.AllowHTTP:
	case u.Scheme == "http":
		return nil, fmt.Errorf("objstore: endpoint %q is plain http; set allow_http to accept that", objstore.RedactURL(o.Endpoint))
	default:
		return nil, fmt.Errorf("objstore: endpoint %q: scheme must be https", objstore.RedactURL(o.Endpoint))
	}
	if o.Bucket == "" {
		return nil, errors.New("objstore: no bucket named")
	}
	if o.Region == "" {
		return nil, errors.New("objstore: the node's region is not set")
	}
	switch {
	case o.InstanceRole && (o.AccessKey != "" || o.SecretKey != "" || o.SessionToken != ""):
		return nil, errors.New("objstore: instance-role credentials come from the metadata service; give no access key, secret key or session token with them")
	case !o.InstanceRole && (o.AccessKey == "" || o.SecretKey == ""):
		return nil, errors.New("objstore: no access key or secret key")
	}
	if o.ExpectedBucketOwner != "" && !ownerRE.MatchString(o.ExpectedBucketOwner) {
		return nil, fmt.Errorf("objstore: expected bucket owner %q is not a 12-digit AWS account id", o.ExpectedBucketOwner)
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
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	o.Prefix = strings.Trim(o.Prefix, "/")
	return u, nil
}

// New connects to the bucket and checks that it is in o.Region.
func New(ctx context.Context, o Options) (*Store, error) {
	s, err := newStore(o)
	if err != nil {
		return nil, err
	}
	var loc string
	err = objstore.Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		var err error
		loc, err = s.location(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("objstore: bucket %q at %s: %w", s.o.Bucket, s.base, err)
	}
	if loc != s.o.Region {
		return nil, &RegionError{Bucket: s.o.Bucket, BucketRegion: loc, NodeRegion: s.o.Region}
	}
	// The location request goes to the configured host; the client
	// picks its own for AWS names (from the region). One listing of a
	// single key through the client finds, at boot rather than at the
	// first round, a host it would use that is not the configured one.
	err = objstore.Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for o := range s.c.ListObjects(lctx, s.o.Bucket, minio.ListObjectsOptions{Prefix: s.full(""), MaxKeys: 1}) {
			if o.Err != nil {
				return classify(o.Err)
			}
			break
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("objstore: bucket %q at %s: %w", s.o.Bucket, s.base, err)
	}
	return s, nil
}

// maxListed bounds a listing: the bucket's answers are untrusted, and one
// that says "truncated" for ever must not grow the process without end.
const maxListed = 1 << 20

// newStore is the client, unchecked against the bucket.
func newStore(o Options) (*Store, error) {
	u, err := o.check()
	if err != nil {
		return nil, err
	}
	var creds *credentials.Credentials
	if o.InstanceRole {
		// The metadata service is plain http on a link-local address;
		// its client has the same bounded waits as the store's.
		creds = credentials.New(&credentials.IAM{
			Client:   &http.Client{Transport: imdsv2Only{newTransport(o, nil)}, Timeout: o.Timeout},
			Endpoint: o.MetadataEndpoint,
		})
	} else {
		creds = credentials.NewStaticV4(o.AccessKey, o.SecretKey, o.SessionToken)
	}
	tr := &signing{
		next:   newTransport(o, o.RootCAs),
		creds:  creds,
		region: o.Region,
		owner:  o.ExpectedBucketOwner,
		hosts:  allowedHosts(u, o.Bucket, o.VirtualHosted),
	}
	lookup := minio.BucketLookupPath
	if o.VirtualHosted {
		lookup = minio.BucketLookupDNS
	}
	c, err := minio.New(u.Host, &minio.Options{
		// The client signs nothing itself: the signing transport adds
		// the expected bucket owner and then signs every request, so
		// that the header is covered by the signature (minio-go has no
		// way to add a header to every request before it signs).
		Creds:           credentials.New(&credentials.Static{Value: credentials.Value{SignerType: credentials.SignatureAnonymous}}),
		Secure:          u.Scheme == "https",
		Transport:       tr,
		Region:          o.Region, // no location lookups, no following a bucket elsewhere
		BucketLookup:    lookup,
		TrailingHeaders: true, // the checksum of a single PUT goes in a trailer
		MaxRetries:      1,    // objstore.Retry retries, with backoff
	})
	if err != nil {
		return nil, fmt.Errorf("objstore: %w", err)
	}
	// Dual-stack host names are other names than the configured one.
	c.SetS3EnableDualstack(false)
	return &Store{o: o, base: &url.URL{Scheme: u.Scheme, Host: u.Host}, c: c, hc: &http.Client{
		Transport: tr,
		// S3 answers with errors, not redirects, when a request goes to
		// the wrong place; a 301 names the bucket's region and is read
		// as such, never followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

// CreateBucket makes the bucket of o in o.Region: for test servers and
// first-time setup; the node never creates buckets.
func CreateBucket(ctx context.Context, o Options) error {
	s, err := newStore(o)
	if err != nil {
		return err
	}
	return objstore.Retry(ctx, max(s.o.Attempts, 3), max(s.o.Backoff, 200*time.Millisecond), func() error {
		err := s.c.MakeBucket(ctx, s.o.Bucket, minio.MakeBucketOptions{Region: s.o.Region})
		if code(err) == "BucketAlreadyOwnedByYou" {
			return nil
		}
		return classify(err)
	})
}

func (s *Store) String() string {
	style := ""
	if s.o.VirtualHosted {
		style = ", virtual-hosted"
	}
	return fmt.Sprintf("s3 %s bucket %s (%s%s)", s.base, s.o.Bucket, s.o.Region, style)
}

func (s *Store) key(name string) (string, error) {
	if err := objstore.CheckName(name); err != nil {
		return "", err
	}
	return s.full(name), nil
}

// full is a name (or a prefix of names) as the bucket holds it, below
// the configured prefix.
func (s *Store) full(name string) string {
	if s.o.Prefix == "" {
		return name
	}
	return s.o.Prefix + "/" + name
}

// permanentCodes are the service's errors that a retry cannot fix.
var permanentCodes = []string{"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "NoSuchKey",
	"InvalidBucketName", "AuthorizationHeaderMalformed", "InvalidRegion", "InvalidToken", "ExpiredToken", "PermanentRedirect",
	"InvalidArgument"}

// A checksum mismatch (BadDigest, XAmzContentChecksumMismatch) means the
// bytes were damaged on the way: a retry sends them again.

// Error is an error answer from the service.
type Error struct {
	Status  int
	Code    string
	Message string
	Region  string // set by the errors that name the bucket's region
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("s3: %s (HTTP %d)", e.Code, e.Status)
	}
	return fmt.Sprintf("s3: %s: %s (HTTP %d)", e.Code, e.Message, e.Status)
}

// code is the service's error code in err, or "".
func code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return minio.ToErrorResponse(err).Code
}

// classify turns the client's error answers into Errors (their text
// names the code) and marks those a retry cannot fix.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var he hostError
	if errors.As(err, &he) {
		return objstore.Permanent(err)
	}
	if r := minio.ToErrorResponse(err); r.Code != "" {
		err = &Error{Status: r.StatusCode, Code: r.Code, Message: r.Message, Region: r.Region}
	}
	if slices.Contains(permanentCodes, code(err)) {
		return objstore.Permanent(err)
	}
	return err
}

// location asks where the bucket is, in a GetBucketLocation request
// signed for the node's region. A bucket elsewhere answers with an
// error that names its region (AuthorizationHeaderMalformed, a 301
// PermanentRedirect, the x-amz-bucket-region header), which is taken as
// the answer, never followed.
func (s *Store) location(ctx context.Context) (string, error) {
	u := *s.base
	if s.o.VirtualHosted {
		u.Host = s.o.Bucket + "." + u.Host
		u.Path = "/"
	} else {
		u.Path = "/" + s.o.Bucket + "/"
	}
	u.RawQuery = "location="
	req, err := http.NewRequestWithContext(ctx, "GET", u.String(), nil)
	if err != nil {
		return "", objstore.Permanent(err)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return "", classify(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode == http.StatusOK {
		var loc struct {
			XMLName xml.Name
			Region  string `xml:",chardata"`
		}
		// Anything but a LocationConstraint (an error document, a
		// proxy's page) is no answer: it must not read as us-east-1.
		if err := xml.Unmarshal(raw, &loc); err != nil || loc.XMLName.Local != "LocationConstraint" {
			return "", fmt.Errorf("s3: the bucket's location answer is not a LocationConstraint document (%d bytes, status 200)", len(raw))
		}
		switch r := strings.TrimSpace(loc.Region); r {
		case "":
			return "us-east-1", nil // S3 reports its first region as empty
		case "EU":
			return "eu-west-1", nil
		default:
			return r, nil
		}
	}
	var x struct {
		XMLName               xml.Name
		Code, Message, Region string
	}
	e := &Error{Status: resp.StatusCode, Code: http.StatusText(resp.StatusCode)}
	if xml.Unmarshal(raw, &x) == nil && x.XMLName.Local == "Error" && x.Code != "" {
		e.Code, e.Message, e.Region = x.Code, x.Message, x.Region
	} else if resp.StatusCode == http.StatusForbidden {
		e.Code = "AccessDenied"
	}
	if r := resp.Header.Get("X-Amz-Bucket-Region"); r != "" && e.Region == "" {
		e.Region = r
	}
	switch e.Code {
	case "AuthorizationHeaderMalformed", "InvalidRegion", "PermanentRedirect", "IllegalLocationConstraintException":
		if e.Region != "" {
			return e.Region, nil
		}
	}
	if resp.StatusCode == http.StatusMovedPermanently && e.Region != "" {
		return e.Region, nil
	}
	return "", classify(e)
}

// Put uploads in one request up to PartSize, as a multipart upload of
// PartSize parts beyond. Every request carries a SHA-256 flexible
// checksum (x-amz-checksum-sha256, for each part and for a single PUT)
// that the server checks against what it received. It then checks the
// stored size. A failed attempt aborts its multipart upload and the next
// starts afresh.
func (s *Store) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	// A reader shorter than size fails every attempt the same way:
	// refuse it before sending anything.
	end, err := r.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if end < size {
		return fmt.Errorf("objstore: %s: the upload holds %d bytes, not %d", name, end, size)
	}
	return objstore.Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			return objstore.Permanent(err)
		}
		// Only Read and Seek: a reader with ReadAt would be sent by
		// parallel part uploads, each with a part-sized buffer.
		info, err := s.c.PutObject(ctx, s.o.Bucket, key, struct{ io.ReadSeeker }{r}, size, minio.PutObjectOptions{
			PartSize:    s.o.PartSize,
			ContentType: "application/octet-stream",
			Checksum:    minio.ChecksumSHA256,
		})
		if err != nil {
			return classify(err)
		}
		if info.Size != size {
			return fmt.Errorf("objstore: %s: %d bytes sent of %d", name, info.Size, size)
		}
		st, err := s.c.StatObject(ctx, s.o.Bucket, key, minio.StatObjectOptions{})
		if err != nil {
			return classify(err)
		}
		if st.Size != size {
			return fmt.Errorf("objstore: %s holds %d bytes after upload, not %d", name, st.Size, size)
		}
		return nil
	})
}

func (s *Store) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	key, err := s.key(name)
	if err != nil {
		return nil, err
	}
	var obj *minio.Object
	err = objstore.Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		var err error
		if obj, err = s.c.GetObject(ctx, s.o.Bucket, key, minio.GetObjectOptions{}); err != nil {
			return classify(err)
		}
		// GetObject is lazy: Stat sends the request.
		if _, err := obj.Stat(); err != nil {
			obj.Close()
			return classify(err)
		}
		return nil
	})
	if err != nil {
		if code(err) == "NoSuchKey" {
			return nil, fmt.Errorf("%w: %s", objstore.ErrNotFound, name)
		}
		return nil, err
	}
	return obj, nil
}

func (s *Store) List(ctx context.Context, prefix string) ([]objstore.Object, error) {
	full := s.full(prefix)
	var out []objstore.Object
	err := objstore.Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		out = out[:0]
		// The listing runs in the client's goroutine until its context
		// ends; an error ends it early.
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for o := range s.c.ListObjects(lctx, s.o.Bucket, minio.ListObjectsOptions{Prefix: full, Recursive: true, MaxKeys: s.listPage}) {
			if o.Err != nil {
				return classify(o.Err)
			}
			name := o.Key
			if s.o.Prefix != "" {
				name = strings.TrimPrefix(name, s.o.Prefix+"/")
			}
			if len(out) == maxListed {
				return objstore.Permanent(fmt.Errorf("objstore: the listing of %q goes on past %d objects: refused", full, maxListed))
			}
			out = append(out, objstore.Object{Name: name, Size: o.Size})
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		slices.SortFunc(out, func(a, b objstore.Object) int { return strings.Compare(a.Name, b.Name) })
		return nil
	})
	return out, err
}

func (s *Store) Delete(ctx context.Context, name string) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	return objstore.Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		return classify(s.c.RemoveObject(ctx, s.o.Bucket, key, minio.RemoveObjectOptions{}))
	})
}

// newTransport carries the requests: bounded waits everywhere (Timeout),
// TLS 1.2 or later with the given roots (nil: the system's), no proxy
// from the environment.
func newTransport(o Options, roots *x509.CertPool) *http.Transport {
	dial := o.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: min(o.Timeout, 15*time.Second), KeepAlive: 30 * time.Second}).DialContext
	}
	idle := o.Timeout
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, idle)
			defer cancel()
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &idleConn{Conn: c, idle: idle}, nil
		},
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
		TLSHandshakeTimeout:   min(o.Timeout, 15*time.Second),
		ResponseHeaderTimeout: o.Timeout,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
	}
}

// idleConn is a connection whose every read and write must make progress
// within idle: each call moves both deadlines (a read pending while the
// request is written sees the new one). A transfer may take as long as it
// needs; a peer that stops sending or reading fails it after idle.
// ResponseHeaderTimeout alone would not do: it starts once the request
// is written, so a server that stops reading the body would hold the
// write forever.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	c.Conn.SetDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	c.Conn.SetDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(p)
}

// endpointURL parses an endpoint: a scheme and a host, no path, no user
// information (the credentials are the access and secret keys, never
// part of the URL).
func endpointURL(endpoint string) (*url.URL, error) {
	u, err := url.Parse(endpoint)
	if err == nil && u.User != nil {
		return nil, fmt.Errorf("objstore: endpoint %q carries user information (a name or password); give the credentials as the access and secret keys", objstore.RedactURL(endpoint))
	}
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("objstore: endpoint %q is not a URL of the form https://host[:port]", objstore.RedactURL(endpoint))
	}
	return u, nil
}

// imdsv2Only refuses a metadata request without a session token: the
// credentials client falls back to IMDSv1 (no token) when the token
// request fails, and the node promises IMDSv2.
type imdsv2Only struct{ next http.RoundTripper }

func (t imdsv2Only) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodPut && req.Header.Get("X-Aws-Ec2-Metadata-Token") == "" {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, objstore.Permanent(errors.New("objstore: the metadata service gave no IMDSv2 session token; not asking without one (IMDSv1)"))
	}
	return t.next.RoundTrip(req)
}

// String names the options without their secrets (a %v or %+v of
// Options in a log or a test failure).
func (o Options) String() string {
	return fmt.Sprintf("s3.Options{Endpoint: %s, Bucket: %q, Prefix: %q, Region: %q, InstanceRole: %v, VirtualHosted: %v}",
		objstore.RedactURL(o.Endpoint), o.Bucket, o.Prefix, o.Region, o.InstanceRole, o.VirtualHosted)
}
