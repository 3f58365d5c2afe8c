package objstore

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestSignV4Vector checks the signer against the GET example of AWS's
// "Authenticating Requests: Using the Authorization Header" page for S3
// (the published access key, secret, date and expected signature).
func TestSignV4Vector(t *testing.T) {
	req, err := http.NewRequest("GET", "https://examplebucket.s3.amazonaws.com/test.txt", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", "bytes=0-9")
	now := time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)
	signV4(req, emptySHA256, "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1", now)
	want := "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
	if got := req.Header.Get("Authorization"); got != want {
		t.Fatalf("Authorization:\n got %s\nwant %s", got, want)
	}
	// Any change to what is signed changes the signature.
	for name, edit := range map[string]func(r *http.Request){
		"method":  func(r *http.Request) { r.Method = "HEAD" },
		"path":    func(r *http.Request) { r.URL.Path = "/test.txu" },
		"query":   func(r *http.Request) { r.URL.RawQuery = "versionId=1" },
		"header":  func(r *http.Request) { r.Header.Set("Range", "bytes=0-8") },
		"host":    func(r *http.Request) { r.URL.Host = "otherbucket.s3.amazonaws.com" },
		"payload": nil,
	} {
		r2, _ := http.NewRequest("GET", "https://examplebucket.s3.amazonaws.com/test.txt", nil)
		r2.Header.Set("Range", "bytes=0-9")
		hash := emptySHA256
		if edit != nil {
			edit(r2)
		} else {
			hash = strings.Repeat("0", 64)
		}
		signV4(r2, hash, "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1", now)
		if r2.Header.Get("Authorization") == want {
			t.Errorf("changing the %s left the signature unchanged", name)
		}
	}
}

func TestURIEncode(t *testing.T) {
	for _, c := range []struct {
		in    string
		slash bool
		want  string
	}{
		{"a/b c~-_.", false, "a/b%20c~-_."},
		{"a/b c", true, "a%2Fb%20c"},
		{"x+y=z&é", true, "x%2By%3Dz%26%C3%A9"},
	} {
		if got := uriEncode(c.in, c.slash); got != c.want {
			t.Errorf("uriEncode(%q, %v) = %q, want %q", c.in, c.slash, got, c.want)
		}
	}
	q := map[string][]string{"uploads": {""}, "prefix": {"a/b"}, "list-type": {"2"}}
	if got, want := canonicalQuery(q), "list-type=2&prefix=a%2Fb&uploads="; got != want {
		t.Errorf("canonicalQuery = %q, want %q", got, want)
	}
}

// TestSignV4KeysCleared: every key buffer the signer derives ("AWS4" and
// the secret, kDate, kRegion, kService, kSigning) is all zeros once the
// request is signed. The hook sees the signer's own slices, so it sees
// what stays in memory.
func TestSignV4KeysCleared(t *testing.T) {
	var seen [][]byte
	signKeysHook = func(keys [][]byte) { seen = keys }
	defer func() { signKeysHook = nil }()
	req, _ := http.NewRequest("GET", "https://examplebucket.s3.amazonaws.com/test.txt", nil)
	secret := "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
	signV4(req, emptySHA256, "AKIAIOSFODNN7EXAMPLE", secret, "us-east-1", time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC))
	names := []string{`"AWS4"+secret`, "kDate", "kRegion", "kService", "kSigning"}
	if len(seen) != len(names) {
		t.Fatalf("the hook saw %d key buffers, want %d", len(seen), len(names))
	}
	for i, k := range seen {
		want := 32
		if i == 0 {
			want = 4 + len(secret)
		}
		if len(k) != want {
			t.Errorf("%s: %d bytes, want %d", names[i], len(k), want)
		}
		// Only a count: the test does not print key bytes.
		if n := len(k) - bytes.Count(k, []byte{0}); n != 0 {
			t.Errorf("%s is not cleared: %d of its %d bytes are not zero", names[i], n, len(k))
		}
	}
}
