package config

// The redacted form of a config is what the node measures into its TPM
// (docs/attestation.md): the config with every secret replaced by a
// commitment to it, in one canonical encoding. An auditor checks a quote
// with the redacted form alone, so attestation does not hand the auditor
// the node's TLS key or its object-store credentials; whoever holds the full
// config can recompute the same bytes from it.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// secretField is one field whose value is a secret: the redacted form
// carries a commitment in its place.
type secretField struct {
	// path is the field's path in the document, as errors name it.
	path string
	// at returns the field in c, or nil when its section is absent.
	at func(c *Config) *string
}

// secretFields are the config's secrets, the one list the redaction
// follows; docs/config.md lists the same paths (a test keeps the two in
// step, and another fails when a field whose name suggests a secret is in
// neither this list nor publicFields).
//
// backup.store.s3.access_key is not among them: it names the credential
// (it travels in every request's Authorization header and in the
// provider's access logs) and proves nothing without the secret key, and an
// auditor gains from seeing which credential the node was given.
var secretFields = []secretField{
	{"tls.key", func(c *Config) *string {
		if c.TLS == nil {
			return nil
		}
		return &c.TLS.Key
	}},
	{"backup.store.s3.secret_key", func(c *Config) *string {
		if c.Backup == nil || c.Backup.Store.S3 == nil || c.Backup.Store.S3.SecretKey == "" {
			return nil
		}
		return &c.Backup.Store.S3.SecretKey
	}},
	// The session token of temporary credentials: with the keys it is
	// the credential, and the providers log it no more than the secret.
	{"backup.store.s3.session_token", func(c *Config) *string {
		if c.Backup == nil || c.Backup.Store.S3 == nil || c.Backup.Store.S3.SessionToken == "" {
			return nil
		}
		return &c.Backup.Store.S3.SessionToken
	}},
}

// SecretFields returns the paths of the fields that the redacted form
// replaces by commitments.
func SecretFields() []string {
	p := make([]string, len(secretFields))
	for i, f := range secretFields {
		p[i] = f.path
	}
	return p
}

// CommitmentPrefix starts every commitment in a redacted config; 64
// lowercase hex digits follow it.
const CommitmentPrefix = "redacted:hmac-sha256:"

// The labels separate these HMACs from any other use of the same inputs.
const (
	commitKeyLabel = "bulwark config commitment key v1"
	commitLabel    = "bulwark config secret v1"
)

// IsCommitment reports whether s has the form of a commitment.
func IsCommitment(s string) bool {
	h, ok := strings.CutPrefix(s, CommitmentPrefix)
	if !ok || len(h) != 64 {
		return false
	}
	for _, c := range h {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// commitKey is the key of every commitment of one config: an HMAC of the
// node's TLS private key. A commitment must hide its secret from whoever
// holds the redacted config, also when the secret is guessable (an S3
// secret key an operator typed): a salt that the auditor sees would not
// stop a dictionary attack on one commitment, so the salt must itself be
// secret and unguessable. The TLS key is both, every node that can be
// attested has one (the attestation endpoint is on the management API,
// which needs tls), and it is in the config already, so the node and
// `bulwarkctl config redact` derive the same key with nothing to add to the
// schema. Without tls the key is fixed and the commitments are plain
// hashes; `bulwarkctl config redact` refuses to write those
// (RedactDocument).
func commitKey(tlsKey string) []byte {
	m := hmac.New(sha256.New, []byte(commitKeyLabel))
	m.Write([]byte(tlsKey))
	return m.Sum(nil)
}

// commit is the commitment to the value of the field at path: the field's
// path is bound too, so that one value in two fields gives two unrelated
// commitments.
func commit(key []byte, path, value string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(commitLabel))
	m.Write([]byte{0})
	m.Write([]byte(path))
	m.Write([]byte{0})
	m.Write([]byte(value))
	return CommitmentPrefix + hex.EncodeToString(m.Sum(nil))
}

// Redacted is the canonical redacted form of a config the node has parsed:
// the bytes it measures. Every secret is committed to, whatever its value
// looks like: a node is never told that a value is already a commitment.
// c is not modified.
func (c *Config) Redacted() ([]byte, error) {
	r := c.secretsCopy()
	var key []byte
	if c.TLS != nil {
		key = commitKey(c.TLS.Key)
	} else {
		key = commitKey("")
	}
	for _, f := range secretFields {
		if p := f.at(r); p != nil {
			*p = commit(key, f.path, *p)
		}
	}
	return canonicalJSON(r)
}

// secretsCopy copies c deeply enough that replacing its secrets leaves c
// as it was: the sections that hold a secret are copied, the rest shared.
func (c *Config) secretsCopy() *Config {
	r := *c
	if c.TLS != nil {
		t := *c.TLS
		r.TLS = &t
	}
	if c.Backup != nil {
		b := *c.Backup
		if b.Store.S3 != nil {
			s := *b.Store.S3
			b.Store.S3 = &s
		}
		r.Backup = &b
	}
	return &r
}

// canonicalJSON is the one encoding of the redacted form: encoding/json's
// compact output of the Config type, so members appear in the order of the
// schema's fields, an optional member that is absent or zero is left out,
// and strings are escaped as encoding/json escapes them. Formatting, member
// order and escapes in the document the node read do not reach it.
func canonicalJSON(c *Config) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("config: encoding the redacted form: %w", err)
	}
	return b, nil
}

// Canonical is the canonical redacted form of a document that is a full
// config, a redacted one, or one with some secrets redacted: each secret in
// the clear is committed to, each commitment is kept. A full config and its
// redacted form give the same bytes. The document passes the node's strict
// reading (unknown or repeated fields, null and wrong types are errors)
// but not its validation: an auditor's copy of a config may hold a
// certificate that has expired since the node booted.
func Canonical(doc []byte) ([]byte, error) {
	out, _, err := canonical(doc)
	return out, err
}

// RedactDocument is Canonical for `bulwarkctl config redact`, which
// refuses to write a redacted form whose commitments a guess could open:
// one with a secret but no tls.key to key the commitments with.
func RedactDocument(doc []byte) ([]byte, error) {
	out, unkeyed, err := canonical(doc)
	if err != nil {
		return nil, err
	}
	if len(unkeyed) > 0 {
		return nil, fmt.Errorf("config: %s would be committed to without a key: the commitments are keyed with tls.key, which this config lacks, and a node without tls serves no attestation", strings.Join(unkeyed, ", "))
	}
	return out, nil
}

func canonical(doc []byte) (out []byte, unkeyed []string, err error) {
	c, err := decodeStrict(doc)
	if err != nil {
		return nil, nil, err
	}
	tlsKeyClear := c.TLS != nil && !IsCommitment(c.TLS.Key)
	var key []byte
	switch {
	case tlsKeyClear:
		key = commitKey(c.TLS.Key)
	case c.TLS == nil:
		key = commitKey("")
	}
	for _, f := range secretFields {
		p := f.at(c)
		if p == nil {
			continue
		}
		if IsCommitment(*p) {
			if c.TLS == nil {
				unkeyed = append(unkeyed, f.path)
			}
			continue
		}
		if key == nil {
			return nil, nil, fmt.Errorf("config: %s is in the clear but tls.key is redacted; its commitment is keyed with the TLS key, so redact the full config (bulwarkctl config redact)", f.path)
		}
		if c.TLS == nil {
			unkeyed = append(unkeyed, f.path)
		}
		*p = commit(key, f.path, *p)
	}
	out, err = canonicalJSON(c)
	if err != nil {
		return nil, nil, err
	}
	// The redacted form must read back as a config, or an auditor could
	// not check the file it was given; encoding/json writes a required
	// list that the document left out as null, which the reader refuses.
	if _, err := decodeStrict(out); err != nil {
		return nil, nil, fmt.Errorf("config: the document has no canonical redacted form (is it complete? `bulwarkctl config check` says): %w", err)
	}
	return out, unkeyed, nil
}

// decodeStrict is Parse without the validation.
func decodeStrict(doc []byte) (*Config, error) {
	if len(doc) == 0 {
		return nil, errors.New("config: the document is empty")
	}
	if len(doc) > MaxSize {
		return nil, fmt.Errorf("config: the document is %d bytes; the limit is %d", len(doc), MaxSize)
	}
	if err := checkShape(doc, reflect.TypeOf(Config{})); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return &c, nil
}
