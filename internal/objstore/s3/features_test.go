package s3_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/bulwarkvm/bulwark/internal/objstore"
	"github.com/bulwarkvm/bulwark/internal/objstore/miniotest"
	"github.com/bulwarkvm/bulwark/internal/objstore/s3"
)

// exercise puts (one request and multipart), lists, reads back and
// deletes through st.
func exercise(t *testing.T, st objstore.Store) {
	t.Helper()
	ctx := context.Background()
	big := make([]byte, 11<<20)
	rand.Read(big)
	for name, data := range map[string][]byte{"n/1/small": []byte("small object"), "n/1/big": big} {
		if err := st.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatalf("Put %s: %v", name, err)
		}
		rc, err := st.Get(ctx, name)
		if err != nil {
			t.Fatalf("Get %s: %v", name, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s read back: %d bytes, %v", name, len(got), err)
		}
	}
	objs, err := st.List(ctx, "n/1/")
	if err != nil || len(objs) != 2 {
		t.Fatalf("List: %+v %v", objs, err)
	}
	for _, o := range objs {
		if err := st.Delete(ctx, o.Name); err != nil {
			t.Fatalf("Delete %s: %v", o.Name, err)
		}
	}
}

// TestS3SessionToken: temporary credentials from MinIO's STS AssumeRole
// work with their session token, and are refused without it.
func TestS3SessionToken(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{Region: "eu-north-1"})
	srv.MakeBucket(t, "bulwark")
	v := srv.AssumeRole(t)
	o := s3Options(srv, "bulwark", "eu-north-1")
	o.AccessKey, o.SecretKey = v.AccessKeyID, v.SecretAccessKey
	o.Attempts = 1
	if _, err := s3.New(context.Background(), o); err == nil {
		t.Fatal("temporary credentials without their session token accepted")
	} else if strings.Contains(err.Error(), v.SecretAccessKey) {
		t.Fatal("the error shows the secret")
	}
	o.SessionToken = v.SessionToken
	st, err := s3.New(context.Background(), o)
	if err != nil {
		t.Fatalf("with the session token: %v", err)
	}
	exercise(t, st)
	if strings.Contains(st.String(), v.SessionToken) || strings.Contains(st.String(), v.AccessKeyID) {
		t.Fatalf("String shows credentials: %s", st)
	}
}

// TestS3VirtualHosted: with virtual-hosted addressing every request goes
// to BUCKET.host, which MinIO serves with MINIO_DOMAIN; the test's dialer
// routes the names to loopback (no DNS), and records what was dialled.
func TestS3VirtualHosted(t *testing.T) {
	const domain = "s3.bulwark.test"
	srv := miniotest.Start(t, miniotest.Options{Region: "eu-north-1", Domain: domain})
	srv.MakeBucket(t, "bulwark")
	_, port, _ := net.SplitHostPort(srv.Addr)
	var mu sync.Mutex
	dialled := map[string]int{}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, p, _ := net.SplitHostPort(addr)
		if p != port || (host != domain && !strings.HasSuffix(host, "."+domain)) {
			return nil, errors.New("test dialer: not the test's domain: " + addr)
		}
		mu.Lock()
		dialled[host]++
		mu.Unlock()
		return (&net.Dialer{}).DialContext(ctx, network, srv.Addr)
	}
	o := s3Options(srv, "bulwark", "eu-north-1")
	o.Endpoint = "http://" + net.JoinHostPort(domain, port)
	o.VirtualHosted, o.DialContext = true, dial
	st, err := s3.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, st)
	mu.Lock()
	defer mu.Unlock()
	if dialled["bulwark."+domain] == 0 || dialled[domain] != 0 {
		t.Fatalf("dialled %v: want bulwark.%s only", dialled, domain)
	}
	if !strings.Contains(st.String(), "virtual-hosted") {
		t.Errorf("String: %s", st)
	}
}

// recorder is a loopback reverse proxy in front of MinIO that keeps the
// method, path and headers of every request.
type recorder struct {
	mu   sync.Mutex
	reqs []http.Request
}

func (rec *recorder) start(t *testing.T, target string) *httptest.Server {
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	ps := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, http.Request{Method: r.Method, URL: r.URL, Header: r.Header.Clone()})
		rec.mu.Unlock()
		rp.ServeHTTP(w, r) // the Host header stays the proxy's, as signed
	}))
	t.Cleanup(ps.Close)
	return ps
}

// TestS3ExpectedBucketOwner: the expected bucket owner is sent on every
// request (the bucket's region, one PUT, the multipart calls, HEAD, GET,
// the listing, DELETE) and is one of the signed headers. MinIO does not
// check the owner; that it accepts the requests shows the signature
// covers the header as sent.
func TestS3ExpectedBucketOwner(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{Region: "eu-north-1"})
	srv.MakeBucket(t, "bulwark")
	rec := &recorder{}
	ps := rec.start(t, srv.Endpoint())
	o := s3Options(srv, "bulwark", "eu-north-1")
	o.Endpoint = ps.URL
	o.ExpectedBucketOwner = "123456789012"
	st, err := s3.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, st)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	kinds := map[string]bool{}
	for _, r := range rec.reqs {
		q := r.URL.Query()
		kind := r.Method
		for _, k := range []string{"location", "uploads", "uploadId", "list-type"} {
			if q.Has(k) {
				kind += " ?" + k
			}
		}
		kinds[kind] = true
		if got := r.Header.Get("X-Amz-Expected-Bucket-Owner"); got != "123456789012" {
			t.Errorf("%s %s: x-amz-expected-bucket-owner %q", r.Method, r.URL, got)
		}
		auth := r.Header.Get("Authorization")
		_, signed, _ := strings.Cut(auth, "SignedHeaders=")
		signed, _, _ = strings.Cut(signed, ",")
		if !strings.Contains(";"+signed+";", ";x-amz-expected-bucket-owner;") {
			t.Errorf("%s %s: the owner header is not signed (Authorization %q)", r.Method, r.URL, auth)
		}
	}
	for _, want := range []string{"GET ?location", "PUT", "POST ?uploads", "PUT ?uploadId", "POST ?uploadId", "HEAD", "GET", "GET ?list-type", "DELETE"} {
		if !kinds[want] {
			t.Errorf("no %s request seen (saw %v)", want, kinds)
		}
	}

	o.ExpectedBucketOwner = "12345"
	if _, err := s3.New(context.Background(), o); err == nil || !strings.Contains(err.Error(), "12-digit") {
		t.Errorf("a malformed owner: %v", err)
	}
}

// imds is a loopback stand-in for the EC2 instance metadata service
// (IMDSv2), NOT the real one, which does not exist here: a PUT of
// /latest/api/token with a TTL header gives a token; every GET needs that
// token in X-aws-ec2-metadata-token, else 401; the role's name and then
// its credentials (here: temporary credentials from MinIO's STS) follow
// the paths and JSON fields AWS documents.
type imds struct {
	creds    credentials.Value
	mu       sync.Mutex
	log      []string
	tokenPut bool
}

const imdsToken = "imds-test-token"

func (m *imds) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.log = append(m.log, r.Method+" "+r.URL.Path+" token="+r.Header.Get("X-aws-ec2-metadata-token"))
	if r.Method == "PUT" && r.URL.Path == "/latest/api/token" {
		if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			http.Error(w, "no TTL", http.StatusBadRequest)
			return
		}
		m.tokenPut = true
		io.WriteString(w, imdsToken)
		return
	}
	if r.Method != "GET" || r.Header.Get("X-aws-ec2-metadata-token") != imdsToken {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case "/latest/meta-data/iam/security-credentials/":
		io.WriteString(w, "bulwark-backup")
	case "/latest/meta-data/iam/security-credentials/bulwark-backup":
		json.NewEncoder(w).Encode(map[string]string{
			"Code": "Success", "Type": "AWS-HMAC", "LastUpdated": time.Now().UTC().Format(time.RFC3339),
			"AccessKeyId": m.creds.AccessKeyID, "SecretAccessKey": m.creds.SecretAccessKey, "Token": m.creds.SessionToken,
			"Expiration": time.Now().Add(10 * time.Minute).UTC().Format(time.RFC3339),
		})
	default:
		http.NotFound(w, r)
	}
}

// TestS3InstanceRole: with instance-role credentials the store asks the
// metadata service (a stand-in, see imds) for a token first, then with
// it for the role and its credentials, and uses them (and their session
// token) against MinIO. The stand-in refuses a GET without the token.
func TestS3InstanceRole(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{Region: "eu-north-1"})
	srv.MakeBucket(t, "bulwark")
	m := &imds{creds: srv.AssumeRole(t)}
	md := httptest.NewServer(m)
	defer md.Close()

	// The stand-in is strict: without the token a GET is refused.
	resp, err := http.Get(md.URL + "/latest/meta-data/iam/security-credentials/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stand-in: a GET without the token answered %s", resp.Status)
	}
	m.mu.Lock()
	m.log = nil
	m.mu.Unlock()

	o := s3Options(srv, "bulwark", "eu-north-1")
	o.AccessKey, o.SecretKey = "", ""
	o.InstanceRole, o.MetadataEndpoint = true, md.URL
	st, err := s3.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, st)

	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.log) < 3 || !strings.HasPrefix(m.log[0], "PUT /latest/api/token") {
		t.Fatalf("metadata requests %q: want the token PUT first", m.log)
	}
	for _, l := range m.log[1:] {
		if strings.HasPrefix(l, "GET ") && !strings.HasSuffix(l, "token="+imdsToken) {
			t.Errorf("metadata request without the token: %s", l)
		}
	}

	o.AccessKey = "AKIA-static"
	if _, err := s3.New(context.Background(), o); err == nil || !strings.Contains(err.Error(), "instance-role") {
		t.Errorf("instance role with a static key: %v", err)
	}
}

// TestS3Timeout: a server that accepts connections and never answers,
// and one that stops in the middle of an object's body, fail the attempt
// after the timeout instead of holding it.
func TestS3Timeout(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var mu sync.Mutex
	var held []net.Conn
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	o := s3.Options{Endpoint: "http://" + silent.Addr().String(), AllowHTTP: true, Bucket: "bulwark", Region: "r1",
		AccessKey: "a", SecretKey: "s", Attempts: 2, Backoff: 10 * time.Millisecond, Timeout: 500 * time.Millisecond}
	start := time.Now()
	_, err = s3.New(context.Background(), o)
	if d := time.Since(start); err == nil || d > 5*time.Second || !strings.Contains(err.Error(), "gave up after 2 attempts") {
		t.Fatalf("a silent server: %v after %s", err, d)
	}

	// A server that answers the bucket's region, then sends the head and
	// a few bytes of an object and stops.
	stall := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("location") {
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/">r1</LocationConstraint>`)
			return
		}
		if r.URL.Query().Has("list-type") { // New's one-key listing
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>bulwark</Name><IsTruncated>false</IsTruncated></ListBucketResult>`)
			return
		}
		w.Header().Set("Content-Length", "1000000")
		w.Header().Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
		w.Header().Set("ETag", `"0123456789abcdef0123456789abcdef"`)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(200)
		w.Write(make([]byte, 1000))
		w.(http.Flusher).Flush()
		select {
		case <-stall:
		case <-r.Context().Done():
		}
	}))
	defer hs.Close()
	defer close(stall) // before Close, which waits for the handler
	o.Endpoint = hs.URL
	st, err := s3.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := st.Get(context.Background(), "n/1/x")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	start = time.Now()
	n, err := io.Copy(io.Discard, rc)
	if d := time.Since(start); err == nil || d > 5*time.Second || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("a body that stops after %d bytes: %v after %s", n, err, d)
	}
}
