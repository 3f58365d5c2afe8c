package s3

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/signer"
)

// emptySHA256 is the hex SHA-256 of nothing, the signed payload hash of a
// request without a body.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// signing is the round tripper under the minio-go client and the
// package's own requests. The client leaves its requests unsigned
// (anonymous credentials); here each one is checked to go to the
// configured endpoint, gets the expected bucket owner header, and is then
// signed with AWS Signature Version 4 by minio-go's signer, for the
// node's region, with the credentials of the configured provider
// (static keys and session token, or the instance role's, renewed by the
// provider before they expire). Signing after the header is added is the
// point: S3 enforces x-amz-expected-bucket-owner only when it is signed
// (the AWS SDKs sign it for that reason, docs/config.md), and minio-go
// offers no way to add a header to every request before it signs.
//
// A body is sent as UNSIGNED-PAYLOAD unless the client set a payload hash
// (streaming trailers): its integrity is the SHA-256 flexible checksum
// the client sends in a header or trailer, which the server checks.
type signing struct {
	next   http.RoundTripper
	creds  *credentials.Credentials
	region string
	owner  string
	hosts  []string // host:port pairs requests may go to
}

func (t *signing) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.checkHost(req.URL); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	v, err := t.creds.GetWithContext(&credentials.CredContext{Context: req.Context()})
	if err == nil && (v.AccessKeyID == "" || v.SecretAccessKey == "") {
		err = fmt.Errorf("the provider gave no access key")
	}
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("objstore: getting the S3 credentials: %w", err)
	}
	// A round tripper must not change the request it is given.
	r := req.Clone(req.Context())
	if t.owner != "" {
		r.Header.Set("X-Amz-Expected-Bucket-Owner", t.owner)
	}
	if r.Header.Get("X-Amz-Content-Sha256") == "" {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			r.Header.Set("X-Amz-Content-Sha256", emptySHA256)
		} else {
			r.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
		}
	}
	r.Header.Del("Authorization")
	resp, err := t.next.RoundTrip(signer.SignV4(*r, v.AccessKeyID, v.SecretAccessKey, v.SessionToken, t.region))
	if err == nil && !(req.Method == http.MethodGet && req.URL.RawQuery == "") {
		// Every answer but an object's content is an XML document the
		// client reads whole; the bucket is untrusted, so a document
		// past maxDocument fails instead of growing the process.
		resp.Body = &limitedBody{ReadCloser: resp.Body, left: maxDocument}
	}
	return resp, err
}

// maxDocument bounds an XML answer (a listing page of 1000 keys is about
// 300 KiB).
const maxDocument = 8 << 20

type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, fmt.Errorf("objstore: the service's answer is larger than %d bytes: refused", maxDocument)
	}
	// One byte past the bound is read, to tell a document of exactly
	// maxDocument bytes (then EOF) from a longer one.
	if int64(len(p)) > b.left {
		p = p[:b.left+1]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return n, fmt.Errorf("objstore: the service's answer is larger than %d bytes: refused", maxDocument)
	}
	return n, err
}

// hostError is a request the client would have sent to a host other than
// the configured endpoint (for an AWS endpoint minio-go picks the host
// from the region; a global or dual-stack name would change it).
type hostError struct{ host, want string }

func (e hostError) Error() string {
	return fmt.Sprintf("objstore: a request would go to %s, not to the configured endpoint %s: refused (for AWS give the regional endpoint, https://s3.REGION.amazonaws.com)", e.host, e.want)
}

func (t *signing) checkHost(u *url.URL) error {
	if h := hostPort(u); !slices.Contains(t.hosts, h) {
		return hostError{host: h, want: t.hosts[0]}
	}
	return nil
}

// allowedHosts are the host:port pairs of the endpoint, and of the
// bucket's own name below it with virtual-hosted addressing.
func allowedHosts(u *url.URL, bucket string, virtual bool) []string {
	h := []string{hostPort(u)}
	if virtual {
		v := *u
		v.Host = bucket + "." + u.Host
		h = append(h, hostPort(&v))
	}
	return h
}

// hostPort is the lower-case host and the port of u, the scheme's when
// the URL names none.
func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}
