package s3_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/objstore"
	"github.com/bulwarkvm/bulwark/internal/objstore/miniotest"
	"github.com/bulwarkvm/bulwark/internal/objstore/s3"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

func s3Options(srv *miniotest.Server, bucket, region string) s3.Options {
	return s3.Options{
		Endpoint: srv.Endpoint(), AllowHTTP: true, Bucket: bucket, Prefix: "backups",
		Region: region, AccessKey: miniotest.AccessKey, SecretKey: miniotest.SecretKey,
		PartSize: 5 << 20, Attempts: 8, Backoff: 500 * time.Millisecond,
	}
}

// TestS3 runs the store against a real MinIO server: region pinning,
// consent to plain http, the operations with multipart uploads, names
// that need encoding, listings in pages, a permanent error without
// retries, and retries across a server restart and a server gone.
func TestS3(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{Region: "eu-north-1"})
	srv.MakeBucket(t, "bulwark")
	ctx := context.Background()

	t.Run("region pinning", func(t *testing.T) {
		for _, node := range []string{"us-east-1", "r1"} {
			_, err := s3.New(ctx, s3Options(srv, "bulwark", node))
			var re *s3.RegionError
			if !errors.As(err, &re) || re.BucketRegion != "eu-north-1" || !strings.Contains(err.Error(), `this node is in region "`+node+`"`) ||
				!strings.Contains(err.Error(), `is in region "eu-north-1"`) {
				t.Fatalf("node in %s, a bucket in eu-north-1: %v", node, err)
			}
		}
	})
	t.Run("plain http needs consent", func(t *testing.T) {
		o := s3Options(srv, "bulwark", "eu-north-1")
		o.AllowHTTP = false
		if _, err := s3.New(ctx, o); err == nil || !strings.Contains(err.Error(), "allow_http") {
			t.Fatalf("plain http accepted: %v", err)
		}
	})
	t.Run("missing bucket", func(t *testing.T) {
		_, err := s3.New(ctx, s3Options(srv, "nope", "eu-north-1"))
		if err == nil || !strings.Contains(err.Error(), `bucket "nope"`) || !strings.Contains(err.Error(), "NoSuchBucket") {
			t.Fatalf("%v", err)
		}
	})

	st, err := s3.New(ctx, s3Options(srv, "bulwark", "eu-north-1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("put get list delete", func(t *testing.T) {
		data := make([]byte, 12<<20+7) // three multipart parts
		rand.Read(data)
		if err := st.Put(ctx, "n/1/seg-00000000", bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
		// The same name again replaces it (idempotent names).
		if err := st.Put(ctx, "n/1/seg-00000000", bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
		rc, err := st.Get(ctx, "n/1/seg-00000000")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read back %d bytes: %v", len(got), err)
		}
		objs, err := st.List(ctx, "n/")
		if err != nil || len(objs) != 1 || objs[0].Name != "n/1/seg-00000000" || objs[0].Size != int64(len(data)) {
			t.Fatalf("List: %+v %v", objs, err)
		}
		if _, err := st.Get(ctx, "n/1/nothing"); !errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("missing object: %v", err)
		}
		if err := st.Delete(ctx, "n/1/seg-00000000"); err != nil {
			t.Fatal(err)
		}
		if err := st.Put(ctx, "../x", bytes.NewReader(nil), 0); err == nil {
			t.Fatal("a name with .. accepted")
		}
	})
	t.Run("a short reader is not stored", func(t *testing.T) {
		for _, n := range []int{100, 6 << 20} { // one PUT, multipart
			data := make([]byte, n)
			start := time.Now()
			if err := st.Put(ctx, "n/5/short", bytes.NewReader(data[:n-1]), int64(n)); err == nil {
				t.Errorf("%d bytes announced, %d given: stored", n, n-1)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("%d bytes announced, %d given: failing took %s (retried?)", n, n-1, d)
			}
		}
		if _, err := st.Get(ctx, "n/5/short"); !errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("after short uploads: %v", err)
		}
	})
	t.Run("names that need encoding, and listings in pages", func(t *testing.T) {
		names := []string{"n/4/a b", "n/4/a+b", "n/4/c=d&e", "n/4/x~y", "n/4/ü"}
		for _, n := range names {
			if err := st.Put(ctx, n, strings.NewReader(n), int64(len(n))); err != nil {
				t.Fatalf("%q: %v", n, err)
			}
		}
		s3.SetListPage(st, 2)
		defer s3.SetListPage(st, 0)
		objs, err := st.List(ctx, "n/4/")
		if err != nil || len(objs) != len(names) {
			t.Fatalf("List in pages of 2: %+v %v", objs, err)
		}
		for i, o := range objs {
			if o.Name != names[i] || o.Size != int64(len(names[i])) {
				t.Errorf("object %d: %+v, want %q", i, o, names[i])
			}
			rc, err := st.Get(ctx, o.Name)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(rc)
			rc.Close()
			if string(got) != o.Name {
				t.Errorf("%q holds %q", o.Name, got)
			}
			if err := st.Delete(ctx, o.Name); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("wrong secret fails at once", func(t *testing.T) {
		o := s3Options(srv, "bulwark", "eu-north-1")
		o.SecretKey = "not-the-secret"
		start := time.Now()
		_, err := s3.New(ctx, o)
		if err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") || strings.Contains(err.Error(), "attempts") {
			t.Fatalf("want SignatureDoesNotMatch without retries, got %v", err)
		}
		if strings.Contains(err.Error(), o.SecretKey) {
			t.Fatal("the error shows the secret")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("a permanent error took %s: retried?", d)
		}
		// And on an upload through a store whose key was good at first.
		o.SecretKey = miniotest.SecretKey
		good, err := s3.New(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		bad := s3.WithSecret(good, "not-the-secret")
		start = time.Now()
		err = bad.Put(ctx, "n/6/x", strings.NewReader("x"), 1)
		if err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") || strings.Contains(err.Error(), "attempts") || time.Since(start) > 2*time.Second {
			t.Fatalf("upload with a wrong secret: %v after %s", err, time.Since(start))
		}
	})
	t.Run("server killed during a multipart upload", func(t *testing.T) {
		data := make([]byte, 24<<20)
		rand.Read(data)
		// Kill the server once 8 MiB have been read, start it again two
		// seconds later; the upload must finish whole.
		var once sync.Once
		r := &tripReader{r: bytes.NewReader(data), at: 8 << 20, trip: func() {
			once.Do(func() {
				srv.Stop()
				go func() {
					time.Sleep(2 * time.Second)
					srv.Restart()
				}()
			})
		}}
		if err := st.Put(ctx, "n/2/seg-00000000", r, int64(len(data))); err != nil {
			t.Fatalf("upload across a server restart: %v", err)
		}
		if !r.tripped {
			t.Fatal("the server was never stopped")
		}
		rc, err := st.Get(ctx, "n/2/seg-00000000")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("stored object differs (%d bytes)", len(got))
		}
	})
	t.Run("server gone for good", func(t *testing.T) {
		o := s3Options(srv, "bulwark", "eu-north-1")
		o.Attempts, o.Backoff = 3, 100*time.Millisecond
		st, err := s3.New(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		srv.Stop()
		defer srv.Restart()
		err = st.Put(ctx, "n/3/seg-00000000", bytes.NewReader([]byte("x")), 1)
		if err == nil || !strings.Contains(err.Error(), "gave up after 3 attempts") {
			t.Fatalf("want a clear failure, got %v", err)
		}
	})
}

// tripReader calls trip once at offset at; it is a ReadSeeker so that
// retries can rewind.
type tripReader struct {
	r       *bytes.Reader
	at      int64
	trip    func()
	tripped bool
}

func (t *tripReader) Read(p []byte) (int, error) {
	pos, _ := t.r.Seek(0, io.SeekCurrent)
	if !t.tripped && pos+int64(len(p)) >= t.at {
		t.tripped = true
		t.trip()
	}
	return t.r.Read(p)
}

func (t *tripReader) Seek(off int64, whence int) (int64, error) { return t.r.Seek(off, whence) }

// TestS3TLS: an https endpoint is trusted through the given CA only.
func TestS3TLS(t *testing.T) {
	ca, err := pki.Init(t.TempDir(), "s3", pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueNode(pki.NodeRequest{Name: "127.0.0.1", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.ParsePool(ca.PEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := miniotest.Start(t, miniotest.Options{Region: "eu-north-1", TLSCert: leaf.CertPEM, TLSKey: leaf.KeyPEM, Roots: roots})
	srv.MakeBucket(t, "bulwark")
	ctx := context.Background()
	o := s3Options(srv, "bulwark", "eu-north-1")
	o.AllowHTTP, o.Attempts = false, 1
	if !strings.HasPrefix(o.Endpoint, "https://") {
		t.Fatalf("endpoint %s", o.Endpoint)
	}

	o.RootCAs = roots
	st, err := s3.New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 6<<20) // a multipart upload over https too
	rand.Read(data)
	if err := st.Put(ctx, "n/1/m", strings.NewReader("over tls"), 8); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "n/1/big", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}

	other, err := pki.Init(t.TempDir(), "other", pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	otherRoots, _ := pki.ParsePool(other.PEM)
	for name, r := range map[string]*x509.CertPool{"another CA": otherRoots, "the system's roots": nil} {
		o.RootCAs = r
		if _, err := s3.New(ctx, o); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("%s: want a certificate error, got %v", name, err)
		}
	}
}
