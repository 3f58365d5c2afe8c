package s3

import "testing"

func TestRedactEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"https://10.0.0.1:9000":               "https://10.0.0.1:9000",
		"https://u:p@10.0.0.1:9000":           "https://REDACTED@10.0.0.1:9000",
		"https://u:p@x@10.0.0.1":              "https://REDACTED@10.0.0.1",
		"https://u:p/q@10.0.0.1/":             "https://REDACTED@10.0.0.1/",
		"u:p@10.0.0.1":                        "REDACTED@10.0.0.1",
		"https://10.0.0.1/?X-Amz-Signature=s": "https://10.0.0.1/?REDACTED",
		"https://u:p?#@10.0.0.1?token=t#f":    "https://REDACTED@10.0.0.1?REDACTED",
	} {
		if got := redactEndpoint(in); got != want {
			t.Errorf("redactEndpoint(%q) = %q, want %q", in, got, want)
		}
	}
}
