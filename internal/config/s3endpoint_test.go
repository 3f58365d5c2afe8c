package config

import (
	"strings"
	"testing"
)

// TestS3EndpointUserinfoNotEchoed: an endpoint that carries user
// information (a name, a password, or both, however malformed) is refused
// with the field named, and no part of the user information is in the
// error.
func TestS3EndpointUserinfoNotEchoed(t *testing.T) {
	// One document (one RSA key), the endpoint swapped in per case.
	doc := backupDoc(t, 3072, `+"region":"r","store":{"s3":{"endpoint":"ENDPOINT","bucket":"bkt","access_key":"a","secret_key":"s"}},"sources":[{"kind":"tree","path":"/data"}]`)
	for _, c := range []struct{ endpoint, host string }{
		{"https://AKIAUSER:hunter2secret@10.99.0.40:9000", "10.99.0.40:9000"},
		{"https://hunter2secret@10.99.0.40:9000", "10.99.0.40:9000"},
		{"http://AKIAUSER:hunter2secret@10.99.0.40:9000", "10.99.0.40:9000"},
		{"https://AKIAUSER:hunter2%zzsecret@10.99.0.40:9000", "10.99.0.40:9000"},   // not a valid URL
		{"https://AKIAUSER:hunter2/secret@10.99.0.40:9000", "10.99.0.40:9000"},     // '/' in the password
		{"https://AKIAUSER:hunter2?#@secret@10.99.0.40:9000", "10.99.0.40:9000"},   // '?', '#', '@' in it
		{"ftp://AKIAUSER:hunter2secret@10.99.0.40:9000", "10.99.0.40:9000"},        // another scheme
		{"AKIAUSER:hunter2secret@10.99.0.40:9000", "10.99.0.40:9000"},              // no scheme
		{"https://AKIAUSER:hunter2secret@10.99.0.40:9000/path", "10.99.0.40:9000"}, // and a path
	} {
		_, err := Parse([]byte(strings.Replace(doc, "ENDPOINT", c.endpoint, 1)))
		if err == nil {
			t.Errorf("%s: accepted", c.endpoint)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "backup.store.s3.endpoint") {
			t.Errorf("%s: the error does not name the field: %s", c.endpoint, msg)
		}
		for _, secret := range []string{"hunter2", "secret@", "AKIAUSER"} {
			if strings.Contains(msg, secret) {
				t.Errorf("%s: the error holds %q: %s", c.endpoint, secret, msg)
			}
		}
		if !strings.Contains(msg, "REDACTED@"+c.host) {
			t.Errorf("%s: the error does not show the redacted endpoint (REDACTED@%s): %s", c.endpoint, c.host, msg)
		}
	}
}
