package objstore

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
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
	// Attempts and Backoff govern retries of whole operations: a failed
	// upload starts again from its first part (a segment is at most a few
	// tens of MiB). The defaults, 6 attempts with waits doubling from 1 s,
	// ride out about half a minute of outage.
	Attempts int
	Backoff  time.Duration
	// RootCAs are the trust anchors of an https endpoint; nil means the
	// system's (a host; the node has none and always sets them).
	RootCAs *x509.CertPool
	// Transport, when set, carries the requests (tests dial inside a
	// network namespace); RootCAs then do not apply.
	Transport http.RoundTripper
}

// S3 is a bucket in the node's region, reached by path-style requests
// signed with AWS Signature Version 4 (sigv4.go). Only the calls the
// backups need are here: bucket location, single and multipart PUT, HEAD,
// GET, ListObjectsV2 and DELETE.
type S3 struct {
	o    S3Options
	base *url.URL
	hc   *http.Client
	// listPage, when set, asks for listings of at most that many keys
	// per answer (tests of the continuation).
	listPage int
}

// RegionError says the bucket lies outside the node's region.
type RegionError struct{ Bucket, BucketRegion, NodeRegion string }

func (e *RegionError) Error() string {
	return fmt.Sprintf("objstore: bucket %q is in region %q, but this node is in region %q: backups stay in the node's region, so the bucket is refused", e.Bucket, e.BucketRegion, e.NodeRegion)
}

// NewS3 connects to the bucket and checks that it is in o.Region.
func NewS3(ctx context.Context, o S3Options) (*S3, error) {
	u, err := endpointURL(o.Endpoint)
	if err != nil {
		return nil, err
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && o.AllowHTTP:
	case u.Scheme == "http":
		return nil, fmt.Errorf("objstore: endpoint %q is plain http; set allow_http to accept that", redactEndpoint(o.Endpoint))
	default:
		return nil, fmt.Errorf("objstore: endpoint %q: scheme must be https", redactEndpoint(o.Endpoint))
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
	s := newS3(o, u)
	var loc string
	err = Retry(ctx, o.Attempts, o.Backoff, func() error {
		var err error
		loc, err = s.location(ctx)
		return classify(err)
	})
	if err != nil {
		return nil, fmt.Errorf("objstore: bucket %q at %s: %w", o.Bucket, s.base, err)
	}
	if loc != o.Region {
		return nil, &RegionError{Bucket: o.Bucket, BucketRegion: loc, NodeRegion: o.Region}
	}
	return s, nil
}

// endpointURL parses an endpoint: a scheme and a host, no path, no user
// information (the credentials are the access and secret keys, never
// part of the URL).
func endpointURL(endpoint string) (*url.URL, error) {
	u, err := url.Parse(endpoint)
	if err == nil && u.User != nil {
		return nil, fmt.Errorf("objstore: endpoint %q carries user information (a name or password); give the credentials as the access and secret keys", redactEndpoint(endpoint))
	}
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("objstore: endpoint %q is not a URL of the form https://host[:port]", redactEndpoint(endpoint))
	}
	return u, nil
}

// redactEndpoint is an endpoint as an error message may show it: the user
// information, if any, replaced by REDACTED, and a query or fragment by
// ?REDACTED. It works on the text rather than on url.Parse's result, so
// that an endpoint url.Parse refuses (a bad escape in a password, a '/' or
// '#' in it) is redacted as well: everything up to the last '@' counts as
// user information, even where that also hides a path. (internal/config
// has the same rule for the config's endpoint.)
func redactEndpoint(s string) string {
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		scheme := ""
		if i := strings.Index(s, "://"); i >= 0 && i < at {
			scheme = s[:i+3]
		}
		s = scheme + "REDACTED@" + s[at+1:]
	}
	if q := strings.IndexAny(s, "?#"); q >= 0 {
		s = s[:q] + "?REDACTED"
	}
	return s
}

// newS3 is the client for the endpoint u, unchecked.
func newS3(o S3Options, u *url.URL) *S3 {
	tr := o.Transport
	if tr == nil {
		tr = &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: o.RootCAs},
			TLSHandshakeTimeout:   15 * time.Second,
			ResponseHeaderTimeout: 2 * time.Minute,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   4,
		}
	}
	return &S3{o: o, base: &url.URL{Scheme: u.Scheme, Host: u.Host}, hc: &http.Client{
		Transport: tr,
		// S3 answers with errors, not redirects, when a request goes
		// to the wrong place; a redirect is not followed with the
		// signature.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// CreateBucket makes the bucket of o in o.Region: for test servers and
// first-time setup; the node never creates buckets.
func CreateBucket(ctx context.Context, o S3Options) error {
	u, err := endpointURL(o.Endpoint)
	if err != nil {
		return err
	}
	s := newS3(o, u)
	var body []byte
	if o.Region != "us-east-1" {
		body, _ = xml.Marshal(struct {
			XMLName  xml.Name `xml:"CreateBucketConfiguration"`
			Location string   `xml:"LocationConstraint"`
		}{Location: o.Region})
	}
	return Retry(ctx, max(o.Attempts, 3), max(o.Backoff, 200*time.Millisecond), func() error {
		resp, err := s.do(ctx, s.o.Region, "PUT", "", nil, nil, bytes.NewReader(body), int64(len(body)), "")
		if err != nil {
			return classify(err)
		}
		resp.Body.Close()
		return nil
	})
}

func (s *S3) String() string {
	return fmt.Sprintf("s3 %s bucket %s (%s)", s.base, s.o.Bucket, s.o.Region)
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

// S3Error is an error answer from the service.
type S3Error struct {
	Status  int
	Code    string
	Message string
	Region  string // set by some errors that name the bucket's region
}

func (e *S3Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("s3: %s (HTTP %d)", e.Code, e.Status)
	}
	return fmt.Sprintf("s3: %s: %s (HTTP %d)", e.Code, e.Message, e.Status)
}

// classify marks the errors a retry cannot fix.
func classify(err error) error {
	var e *S3Error
	if errors.As(err, &e) {
		switch e.Code {
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "NoSuchKey", "InvalidBucketName", "AuthorizationHeaderMalformed", "InvalidRegion":
			return permanent{err}
		}
	}
	return err
}

// maxErrorBody bounds what is read of an error answer or an XML result.
const maxErrorBody = 1 << 20

// do sends one signed request for key (the bucket itself when key is
// empty) and returns the response when its status is 2xx; otherwise the
// service's error. body is read once, from where it stands, for size
// bytes; payloadHash is its hex SHA-256, computed here when empty.
func (s *S3) do(ctx context.Context, region, method, key string, query url.Values, header http.Header, body io.ReadSeeker, size int64, payloadHash string) (*http.Response, error) {
	u := *s.base
	u.Path = "/" + s.o.Bucket
	u.RawPath = "/" + uriEncode(s.o.Bucket, true)
	if key != "" {
		u.Path += "/" + key
		u.RawPath += "/" + uriEncode(key, false)
	}
	// Sent as signed: the canonical form is a valid query string.
	u.RawQuery = canonicalQuery(query)

	var start int64
	if body != nil {
		var err error
		if start, err = body.Seek(0, io.SeekCurrent); err != nil {
			return nil, permanent{err}
		}
		if payloadHash == "" {
			h := sha256.New()
			if _, err := io.CopyN(h, body, size); err != nil {
				return nil, fmt.Errorf("reading the upload: %w", err)
			}
			payloadHash = hex.EncodeToString(h.Sum(nil))
		}
	} else {
		payloadHash = emptySHA256
	}
	rewind := func() (io.ReadCloser, error) {
		if body == nil || size == 0 {
			return http.NoBody, nil
		}
		if _, err := body.Seek(start, io.SeekStart); err != nil {
			return nil, err
		}
		return io.NopCloser(io.LimitReader(body, size)), nil
	}
	rc, err := rewind()
	if err != nil {
		return nil, permanent{err}
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rc)
	if err != nil {
		return nil, permanent{err}
	}
	req.ContentLength = size
	if body != nil && size > 0 {
		req.GetBody = rewind
	}
	for k, v := range header {
		req.Header[k] = v
	}
	signV4(req, payloadHash, s.o.AccessKey, s.o.SecretKey, region, time.Now())
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, errorFrom(resp)
}

// errorFrom reads the service's XML error; a HEAD answer has no body, so
// its status alone names the error.
func errorFrom(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if e := parseError(resp.StatusCode, raw); e != nil && e.Code != "" {
		return e
	}
	e := &S3Error{Status: resp.StatusCode}
	switch resp.StatusCode {
	case http.StatusNotFound:
		e.Code = "NoSuchKey"
	case http.StatusForbidden:
		e.Code = "AccessDenied"
	default:
		e.Code = http.StatusText(resp.StatusCode)
	}
	return e
}

// parseError reads the service's XML error document; nil when raw is not
// one.
func parseError(status int, raw []byte) *S3Error {
	var x struct {
		XMLName               xml.Name
		Code, Message, Region string
	}
	if xml.Unmarshal(raw, &x) != nil || x.XMLName.Local != "Error" {
		return nil
	}
	return &S3Error{Status: status, Code: x.Code, Message: x.Message, Region: x.Region}
}

// decodeResult reads an XML result of at most maxErrorBody bytes. Some
// calls (CompleteMultipartUpload) can answer 200 with an error inside.
func decodeResult(resp *http.Response, v any) error {
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil {
		return err
	}
	if e := parseError(resp.StatusCode, raw); e != nil {
		return e
	}
	if err := xml.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("s3: unreadable answer: %w", err)
	}
	return nil
}

// location asks where the bucket is. The question is signed for
// us-east-1, which S3 accepts from any region; an answer that refuses
// that region names the bucket's own.
func (s *S3) location(ctx context.Context) (string, error) {
	resp, err := s.do(ctx, "us-east-1", "GET", "", url.Values{"location": {""}}, nil, nil, 0, "")
	if err != nil {
		var e *S3Error
		if errors.As(err, &e) && e.Region != "" && (e.Code == "AuthorizationHeaderMalformed" || e.Code == "InvalidRegion") {
			return e.Region, nil
		}
		return "", err
	}
	var loc struct {
		Region string `xml:",chardata"`
	}
	if err := decodeResult(resp, &loc); err != nil {
		return "", err
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

// Put uploads in one request up to PartSize, as a multipart upload of
// PartSize parts beyond; every request carries a Content-MD5 the server
// checks and a signed SHA-256. It then checks the stored size. A failed
// attempt aborts its multipart upload and the next starts afresh.
func (s *S3) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	return Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		var err error
		if size <= int64(s.o.PartSize) {
			_, err = s.sendPart(ctx, key, nil, r, 0, size)
		} else {
			err = s.putMultipart(ctx, key, r, size)
		}
		if err != nil {
			return classify(err)
		}
		stored, err := s.head(ctx, key)
		if err != nil {
			return classify(err)
		}
		if stored != size {
			return fmt.Errorf("objstore: %s holds %d bytes after upload, not %d", name, stored, size)
		}
		return nil
	})
}

// sendPart sends size bytes of r from off, as the whole object (query
// nil) or as one part of a multipart upload, and returns the ETag.
func (s *S3) sendPart(ctx context.Context, key string, query url.Values, r io.ReadSeeker, off, size int64) (string, error) {
	if _, err := r.Seek(off, io.SeekStart); err != nil {
		return "", permanent{err}
	}
	m, h := md5.New(), sha256.New()
	if _, err := io.CopyN(io.MultiWriter(m, h), r, size); err != nil {
		return "", permanent{fmt.Errorf("reading the upload at %d: %w", off, err)}
	}
	if _, err := r.Seek(off, io.SeekStart); err != nil {
		return "", permanent{err}
	}
	header := http.Header{"Content-Md5": {base64.StdEncoding.EncodeToString(m.Sum(nil))}}
	if query == nil {
		header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := s.do(ctx, s.o.Region, "PUT", key, query, header, r, size, hex.EncodeToString(h.Sum(nil)))
	if err != nil {
		return "", err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
	return resp.Header.Get("ETag"), nil
}

type completedPart struct {
	PartNumber int
	ETag       string
}

func (s *S3) putMultipart(ctx context.Context, key string, r io.ReadSeeker, size int64) (err error) {
	resp, err := s.do(ctx, s.o.Region, "POST", key, url.Values{"uploads": {""}}, http.Header{"Content-Type": {"application/octet-stream"}}, nil, 0, "")
	if err != nil {
		return err
	}
	var init struct{ UploadId string }
	if err := decodeResult(resp, &init); err != nil {
		return err
	}
	if init.UploadId == "" {
		return errors.New("s3: no upload id in the answer to a multipart upload")
	}
	defer func() {
		if err == nil {
			return
		}
		// Best effort: a server that is gone keeps the parts until
		// the bucket's lifecycle rule for incomplete uploads.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if resp, aerr := s.do(actx, s.o.Region, "DELETE", key, url.Values{"uploadId": {init.UploadId}}, nil, nil, 0, ""); aerr == nil {
			resp.Body.Close()
		}
	}()
	var parts []completedPart
	part := int64(s.o.PartSize)
	for off, n := int64(0), 1; off < size; off, n = off+part, n+1 {
		q := url.Values{"partNumber": {strconv.Itoa(n)}, "uploadId": {init.UploadId}}
		etag, err := s.sendPart(ctx, key, q, r, off, min(part, size-off))
		if err != nil {
			return fmt.Errorf("part %d: %w", n, err)
		}
		parts = append(parts, completedPart{PartNumber: n, ETag: etag})
	}
	body, err := xml.Marshal(struct {
		XMLName xml.Name        `xml:"CompleteMultipartUpload"`
		Parts   []completedPart `xml:"Part"`
	}{Parts: parts})
	if err != nil {
		return err
	}
	resp, err = s.do(ctx, s.o.Region, "POST", key, url.Values{"uploadId": {init.UploadId}}, nil, bytes.NewReader(body), int64(len(body)), "")
	if err != nil {
		return err
	}
	var done struct{ Key string }
	return decodeResult(resp, &done)
}

// head returns the stored size of key.
func (s *S3) head(ctx context.Context, key string) (int64, error) {
	resp, err := s.do(ctx, s.o.Region, "HEAD", key, nil, nil, nil, 0, "")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.ContentLength, nil
}

func (s *S3) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	key, err := s.key(name)
	if err != nil {
		return nil, err
	}
	var resp *http.Response
	err = Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		var err error
		resp, err = s.do(ctx, s.o.Region, "GET", key, nil, nil, nil, 0, "")
		return classify(err)
	})
	if err != nil {
		var e *S3Error
		if errors.As(err, &e) && e.Code == "NoSuchKey" {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		return nil, err
	}
	return resp.Body, nil
}

func (s *S3) List(ctx context.Context, prefix string) ([]Object, error) {
	full := prefix
	if s.o.Prefix != "" {
		full = s.o.Prefix + "/" + prefix
	}
	var out []Object
	err := Retry(ctx, s.o.Attempts, s.o.Backoff, func() error {
		out = out[:0]
		token := ""
		for {
			q := url.Values{"list-type": {"2"}, "prefix": {full}}
			if token != "" {
				q.Set("continuation-token", token)
			}
			if s.listPage > 0 {
				q.Set("max-keys", strconv.Itoa(s.listPage))
			}
			resp, err := s.do(ctx, s.o.Region, "GET", "", q, nil, nil, 0, "")
			if err != nil {
				return classify(err)
			}
			var page struct {
				Contents []struct {
					Key  string
					Size int64
				}
				IsTruncated           bool
				NextContinuationToken string
			}
			if err := decodeResult(resp, &page); err != nil {
				return classify(err)
			}
			for _, c := range page.Contents {
				name := c.Key
				if s.o.Prefix != "" {
					name = strings.TrimPrefix(name, s.o.Prefix+"/")
				}
				out = append(out, Object{Name: name, Size: c.Size})
			}
			if !page.IsTruncated {
				break
			}
			if page.NextContinuationToken == "" {
				return errors.New("s3: a truncated listing without a continuation token")
			}
			token = page.NextContinuationToken
		}
		slices.SortFunc(out, func(a, b Object) int { return strings.Compare(a.Name, b.Name) })
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
		resp, err := s.do(ctx, s.o.Region, "DELETE", key, nil, nil, nil, 0, "")
		if err != nil {
			return classify(err)
		}
		resp.Body.Close()
		return nil
	})
}
