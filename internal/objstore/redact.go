package objstore

import "strings"

// RedactURL is an endpoint URL as an error message may show it: the user
// information, if any, replaced by REDACTED (https://REDACTED@host), and
// a query or fragment by ?REDACTED. It works on the text rather than on
// url.Parse's result, so that a URL url.Parse refuses (a bad escape in a
// password, a '/' or '#' in it) is redacted as well: everything up to the
// last '@' counts as user information, even where that also hides a
// path. The config's checks and the S3 client both show endpoints this
// way.
func RedactURL(s string) string {
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
