package s3_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/internal/objstore/s3"
)

// TestS3EndpointUserinfoNotEchoed: an endpoint with user information is
// refused before anything is sent, and neither New's nor CreateBucket's
// error holds any of it. (Port 1 on loopback refuses connections, so an
// endpoint that were accepted would fail at the bucket lookup and show
// what that error says.)
func TestS3EndpointUserinfoNotEchoed(t *testing.T) {
	for _, ep := range []string{
		"https://AKIAUSER:hunter2secret@127.0.0.1:1",
		"http://AKIAUSER:hunter2secret@127.0.0.1:1",
		"https://hunter2secret@127.0.0.1:1",
		"https://AKIAUSER:hunter2%zzsecret@127.0.0.1:1",
		"https://AKIAUSER:hunter2/secret@127.0.0.1:1",
		"ftp://AKIAUSER:hunter2secret@127.0.0.1:1",
		"AKIAUSER:hunter2secret@127.0.0.1:1",
	} {
		o := s3.Options{Endpoint: ep, AllowHTTP: true, Bucket: "bkt", Region: "r", AccessKey: "a", SecretKey: "s",
			Attempts: 1, Backoff: time.Millisecond}
		_, err := s3.New(context.Background(), o)
		cerr := s3.CreateBucket(context.Background(), o)
		for name, err := range map[string]error{"New": err, "CreateBucket": cerr} {
			if err == nil {
				t.Errorf("%s(%s): accepted", name, ep)
				continue
			}
			for _, secret := range []string{"hunter2", "secret@", "AKIAUSER"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("%s(%s): the error holds %q: %v", name, ep, secret, err)
				}
			}
			if !strings.Contains(err.Error(), "REDACTED@127.0.0.1:1") {
				t.Errorf("%s(%s): the error does not show the redacted endpoint: %v", name, ep, err)
			}
		}
	}
}
