package objstore

import "testing"

// TestRedactEndpoint: user information and any query or fragment are
// hidden, also in URLs that url.Parse refuses.
func TestRedactEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"https://10.0.0.1:9000":               "https://10.0.0.1:9000",
		"https://u:p@10.0.0.1:9000":           "https://REDACTED@10.0.0.1:9000",
		"https://u:p@x@10.0.0.1":              "https://REDACTED@10.0.0.1",
		"https://u:p/q@10.0.0.1/":             "https://REDACTED@10.0.0.1/",
		"u:p@10.0.0.1":                        "REDACTED@10.0.0.1",
		"https://10.0.0.1/?token=t":           "https://10.0.0.1/?REDACTED",
		"https://10.0.0.1/?X-Amz-Signature=s": "https://10.0.0.1/?REDACTED",
		"https://u:p?#@10.0.0.1?token=t#f":    "https://REDACTED@10.0.0.1?REDACTED",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
