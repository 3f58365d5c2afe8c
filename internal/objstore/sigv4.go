package objstore

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"
	"time"
)

// AWS Signature Version 4 for the S3 service, as specified in the AWS
// documentation ("Signature Version 4 signing process", "Authenticating
// requests: Using the Authorization header"). The payload is always
// hashed (x-amz-content-sha256 carries its SHA-256), never sent unsigned.

const (
	sigAlgorithm = "AWS4-HMAC-SHA256"
	amzDate      = "20060102T150405Z"
	// emptySHA256 is the hex SHA-256 of no bytes, the payload hash of
	// GET, HEAD and DELETE.
	emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

// signV4 adds the x-amz-date, x-amz-content-sha256 and Authorization
// headers to req. payloadHash is the hex SHA-256 of the body. Every header
// already set on req (Content-MD5, Content-Type) is signed, with Host.
func signV4(req *http.Request, payloadHash, accessKey, secretKey, region string, now time.Time) {
	now = now.UTC()
	req.Header.Set("X-Amz-Date", now.Format(amzDate))
	req.Header.Set("X-Amz-Content-Sha256", payloadHash)

	// Canonical headers: lower-case names, sorted, values trimmed.
	names := []string{"host"}
	values := map[string]string{"host": req.URL.Host}
	for k, v := range req.Header {
		lk := strings.ToLower(k)
		names = append(names, lk)
		values[lk] = strings.Join(strings.Fields(strings.Join(v, ",")), " ")
	}
	slices.Sort(names)
	var canonHeaders strings.Builder
	for _, n := range names {
		canonHeaders.WriteString(n + ":" + values[n] + "\n")
	}
	signed := strings.Join(names, ";")

	canonical := strings.Join([]string{
		req.Method,
		req.URL.EscapedPath(),
		canonicalQuery(req.URL.Query()),
		canonHeaders.String(),
		signed,
		payloadHash,
	}, "\n")

	day := now.Format("20060102")
	scope := day + "/" + region + "/s3/aws4_request"
	sum := sha256.Sum256([]byte(canonical))
	toSign := sigAlgorithm + "\n" + now.Format(amzDate) + "\n" + scope + "\n" + hex.EncodeToString(sum[:])

	// The signing key is derived from the secret in four HMAC steps.
	// The buffers this function owns are cleared before it returns:
	// "AWS4"+secret (built in a slice, never as a string), kDate,
	// kRegion, kService and kSigning, each written in place by Sum. What
	// cannot be cleared from here: crypto/hmac copies each key into its
	// own unexported pads (key XOR ipad, key XOR opad; a key longer than
	// the 64-byte block is hashed first, into one more copy) and absorbs
	// them into two SHA-256 states, any of which computes the same MACs
	// as the key; no call wipes them, so they stay in the heap as garbage
	// until the memory is reused. The secret itself
	// is a Go string in S3Options (and in the config), immutable and held
	// for the life of the process. (kSigning is not cached across
	// requests in locked memory: that would leave fewer pads behind,
	// but hold a key that signs for a whole day, and cost each client a
	// locked page that bulwarkctl on an operator's host may not get; the
	// secret it derives from stays on the heap either way.)
	var keys [4][sha256.Size]byte // kDate, kRegion, kService, kSigning
	secret := make([]byte, 0, len("AWS4")+len(secretKey))
	secret = append(append(secret, "AWS4"...), secretKey...)
	hmacInto(&keys[0], secret, day)
	hmacInto(&keys[1], keys[0][:], region)
	hmacInto(&keys[2], keys[1][:], "s3")
	hmacInto(&keys[3], keys[2][:], "aws4_request")
	var mac [sha256.Size]byte
	hmacInto(&mac, keys[3][:], toSign)
	sig := hex.EncodeToString(mac[:])
	clear(secret)
	for i := range keys {
		clear(keys[i][:])
	}
	if signKeysHook != nil {
		signKeysHook([][]byte{secret, keys[0][:], keys[1][:], keys[2][:], keys[3][:]})
	}

	req.Header.Set("Authorization", sigAlgorithm+" Credential="+accessKey+"/"+scope+", SignedHeaders="+signed+", Signature="+sig)
}

// signKeysHook, when set (tests), is called at the end of every signV4
// with the signer's own key buffers, after they were cleared.
var signKeysHook func(keys [][]byte)

// hmacInto writes HMAC-SHA256(key, msg) into dst, so that the result is
// in a buffer the caller owns (and clears), not in a fresh allocation.
func hmacInto(dst *[sha256.Size]byte, key []byte, msg string) {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	m.Sum(dst[:0])
}

// canonicalQuery sorts the parameters by name, then value, each
// URI-encoded with '/' encoded too; a parameter without a value is
// written "name=".
func canonicalQuery(q map[string][]string) string {
	var parts []string
	for k, vs := range q {
		for _, v := range vs {
			parts = append(parts, uriEncode(k, true)+"="+uriEncode(v, true))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, "&")
}

// uriEncode percent-encodes every byte but the unreserved characters
// (A-Z a-z 0-9 - _ . ~), and '/' unless encodeSlash: S3's rule, which
// differs from both of net/url's.
func uriEncode(s string, encodeSlash bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		case c == '/' && !encodeSlash:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		}
	}
	return b.String()
}
