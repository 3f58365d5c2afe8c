package s3_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/objstore/s3"
)

// stub is a loopback stand-in for an S3 endpoint that answers what a test
// needs: MinIO cannot be made to send hostile or odd answers. It records
// each request as "METHOD host path?query".
type stub struct {
	mu     sync.Mutex
	log    []string
	answer func(w http.ResponseWriter, r *http.Request)
}

func (s *stub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.log = append(s.log, r.Method+" "+r.Host+" "+r.URL.Path+"?"+r.URL.RawQuery)
	s.mu.Unlock()
	s.answer(w, r)
}

func (s *stub) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

// stubOptions reach srv for whatever host the endpoint names.
func stubOptions(srv *httptest.Server, endpoint string) s3.Options {
	addr := srv.Listener.Addr().String()
	return s3.Options{Endpoint: endpoint, AllowHTTP: true, Bucket: "bkp", Region: "eu-north-1",
		AccessKey: "AKIA-test", SecretKey: "secret-test", Attempts: 1, Backoff: time.Millisecond, Timeout: 5 * time.Second,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}
}

const locationEUNorth = `<?xml version="1.0" encoding="UTF-8"?><LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/">eu-north-1</LocationConstraint>`

// bucketInEUNorth answers the location request and an empty listing.
func bucketInEUNorth(w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.URL.RawQuery, "location") {
		fmt.Fprint(w, locationEUNorth)
		return
	}
	fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>bkp</Name><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>`)
}

// TestRegionAnswers: what the region check makes of the answers a
// bucket's endpoint can give. A 200 that is not a LocationConstraint
// document (an error document, a proxy's page) is an error, not the
// first region; a 301 or an error that names another region is that
// region, refused and never followed.
func TestRegionAnswers(t *testing.T) {
	for _, c := range []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request)
		region string // want a RegionError naming it; "" want another error
		want   string
	}{
		{"an error document with status 200", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `<?xml version="1.0"?><Error><Code>X</Code><Message>y</Message></Error>`)
		}, "", "not a LocationConstraint document"},
		{"a proxy's page", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `<html><body>log in to the network</body></html>`)
		}, "", "not a LocationConstraint document"},
		{"another document", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `<ListBucketResult><Name>bkp</Name></ListBucketResult>`)
		}, "", "not a LocationConstraint document"},
		{"a 301 with only x-amz-bucket-region", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Amz-Bucket-Region", "eu-west-1")
			w.Header().Set("Location", "http://elsewhere.test/bkp/?location=")
			w.WriteHeader(http.StatusMovedPermanently)
		}, "eu-west-1", ""},
		{"a PermanentRedirect naming the region", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusMovedPermanently)
			fmt.Fprint(w, `<Error><Code>PermanentRedirect</Code><Message>m</Message><Region>us-west-2</Region></Error>`)
		}, "us-west-2", ""},
		{"AuthorizationHeaderMalformed naming the region", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `<Error><Code>AuthorizationHeaderMalformed</Code><Message>m</Message><Region>ap-south-1</Region></Error>`)
		}, "ap-south-1", ""},
		{"a location in another region", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `<LocationConstraint>sa-east-1</LocationConstraint>`)
		}, "sa-east-1", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := &stub{answer: c.answer}
			srv := httptest.NewServer(st)
			defer srv.Close()
			_, err := s3.New(context.Background(), stubOptions(srv, srv.URL))
			var re *s3.RegionError
			switch {
			case err == nil:
				t.Fatal("accepted")
			case c.region != "":
				if !errors.As(err, &re) || re.BucketRegion != c.region || re.NodeRegion != "eu-north-1" {
					t.Fatalf("%v, want a RegionError naming %s", err, c.region)
				}
			case errors.As(err, &re) || !strings.Contains(err.Error(), c.want):
				t.Fatalf("%v, want %q", err, c.want)
			}
			for _, r := range st.requests() {
				if !strings.Contains(r, "location=") {
					t.Errorf("a request after the region answer: %s", r)
				}
			}
			if n := len(st.requests()); n != 1 {
				t.Errorf("%d requests, want the one location request: %q", n, st.requests())
			}
		})
	}
}

// TestHostRefusedAtConnect: for an AWS host name the client picks the
// host itself (from the region); a global endpoint would send the
// requests to s3.eu-north-1.amazonaws.com, which is not the configured
// host. New finds that at once, not the first backup round.
func TestHostRefusedAtConnect(t *testing.T) {
	st := &stub{answer: bucketInEUNorth}
	srv := httptest.NewServer(st)
	defer srv.Close()
	_, err := s3.New(context.Background(), stubOptions(srv, "http://s3.amazonaws.com"))
	if err == nil || !strings.Contains(err.Error(), "s3.eu-north-1.amazonaws.com") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("New: %v, want the other host refused", err)
	}
	for _, r := range st.requests() {
		if !strings.HasPrefix(r, "GET s3.amazonaws.com ") {
			t.Errorf("a request reached the server for another host: %s", r)
		}
	}
	st.log = nil
	// The control: the regional endpoint passes.
	if _, err := s3.New(context.Background(), stubOptions(srv, "http://s3.eu-north-1.amazonaws.com")); err != nil {
		t.Fatalf("the regional endpoint: %v", err)
	}
}

// TestAnswerBound: the bucket's XML answers are untrusted; one larger
// than the bound fails instead of being read whole.
func TestAnswerBound(t *testing.T) {
	entry := `<Contents><Key>k%07d</Key><Size>1</Size><ETag>"x"</ETag><StorageClass>STANDARD</StorageClass></Contents>`
	st := &stub{answer: func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.RawQuery, "location") {
			fmt.Fprint(w, locationEUNorth)
			return
		}
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>bkp</Name><IsTruncated>false</IsTruncated>`)
		for i := 0; i < 120000; i++ { // about 11 MiB
			fmt.Fprintf(w, entry, i)
		}
		fmt.Fprint(w, `</ListBucketResult>`)
	}}
	srv := httptest.NewServer(st)
	defer srv.Close()
	_, err := s3.New(context.Background(), stubOptions(srv, srv.URL))
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("New with an 11 MiB listing page: %v, want it refused", err)
	}
}

// TestInstanceRoleNoIMDSv1: when the metadata service gives no session
// token in time (minio-go waits 1 s for it, then asks without one), the
// client does not fall back to IMDSv1: no request without the token
// reaches the service.
func TestInstanceRoleNoIMDSv1(t *testing.T) {
	md := &stub{answer: func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			select {
			case <-time.After(3 * time.Second):
			case <-r.Context().Done():
			}
			http.Error(w, "no tokens here", http.StatusForbidden)
			return
		}
		fmt.Fprint(w, "role")
	}}
	mdSrv := httptest.NewServer(md)
	defer mdSrv.Close()
	st := &stub{answer: bucketInEUNorth}
	srv := httptest.NewServer(st)
	defer srv.Close()
	o := stubOptions(srv, srv.URL)
	o.AccessKey, o.SecretKey = "", ""
	o.InstanceRole, o.MetadataEndpoint = true, mdSrv.URL
	o.DialContext = nil
	if _, err := s3.New(context.Background(), o); err == nil {
		t.Fatal("New without an IMDSv2 token succeeded")
	}
	for _, r := range md.requests() {
		if !strings.HasPrefix(r, "PUT ") {
			t.Errorf("a metadata request without a token reached the service: %s", r)
		}
	}
	if len(md.requests()) == 0 {
		t.Error("the metadata service was never asked: this test proves nothing")
	}
	if len(st.requests()) != 0 {
		t.Errorf("requests reached the store without credentials: %q", st.requests())
	}
}

// TestOptionsStringRedacts: printing the options shows no credential.
func TestOptionsStringRedacts(t *testing.T) {
	o := s3.Options{Endpoint: "https://s3.eu-north-1.amazonaws.com", Bucket: "b", Region: "eu-north-1",
		AccessKey: "AKIA-visible-id", SecretKey: "the-secret-key", SessionToken: "the-session-token"}
	for _, s := range []string{fmt.Sprint(o), fmt.Sprintf("%+v", o), fmt.Sprintf("%v", &o)} {
		if strings.Contains(s, "the-secret-key") || strings.Contains(s, "the-session-token") {
			t.Errorf("printed options hold a secret: %s", s)
		}
	}
}
