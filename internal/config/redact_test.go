package config

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/pki"
)

// fullDoc is a valid node config with both secrets: a TLS key and an S3
// secret key.
func fullDoc(t *testing.T) (doc string, tlsKey string) {
	t.Helper()
	ca, err := pki.Init(filepath.Join(t.TempDir(), "ca"), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	node, err := ca.IssueNode(pki.NodeRequest{Name: "n1", IPs: []net.IP{net.ParseIP("10.0.0.5")}})
	if err != nil {
		t.Fatal(err)
	}
	sec, _ := json.Marshal(TLS{CA: string(ca.PEM), Certificate: string(node.CertPEM), Key: string(node.KeyPEM)})
	doc = strings.Replace(backupDoc(t, 3072, ""), `"hostname":"n1",`, `"hostname":"n1","tls":`+string(sec)+`,`, 1)
	if _, err := Parse([]byte(doc)); err != nil {
		t.Fatal(err)
	}
	return doc, string(node.KeyPEM)
}

// The canonical redacted form, byte for byte, of a small document: the
// encoding docs/attestation.md defines and the commitments as it writes
// them, computed here from that description.
func TestRedactedFormExact(t *testing.T) {
	const doc = `{ "hostname" : "n\u0031", "version": 1,
		"tls": {"key": "KEY", "certificate": "CERT", "ca": "CA <&>"},
		"volumes": [{"name": "data", "serial": "d0", "mount": "/data", "discard": false}],
		"backup": {"region": "r", "public_key": "PUB", "sources": [{"kind": "tree", "path": "/data"}],
		  "store": {"s3": {"endpoint": "https://s3", "bucket": "bkt", "access_key": "AK", "secret_key": "SK"}}}}`
	mac := func(key []byte, parts ...string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(strings.Join(parts, "\x00")))
		return m.Sum(nil)
	}
	key := mac([]byte("bulwark config commitment key v1"), "KEY")
	c := func(path, v string) string {
		return "redacted:hmac-sha256:" + hex.EncodeToString(mac(key, "bulwark config secret v1", path, v))
	}
	want := `{"version":1,"hostname":"n1","network":{},` +
		`"volumes":[{"name":"data","serial":"d0","mount":"/data"}],` +
		`"tls":{"ca":"CA \u003c\u0026\u003e","certificate":"CERT","key":"` + c("tls.key", "KEY") + `"},` +
		`"backup":{"region":"r","public_key":"PUB","store":{"s3":{"endpoint":"https://s3","bucket":"bkt","access_key":"AK","secret_key":"` + c("backup.store.s3.secret_key", "SK") + `"}},` +
		`"sources":[{"kind":"tree","path":"/data"}]}}`
	got, err := Canonical([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("canonical form\n got %s\nwant %s", got, want)
	}
	// The redacted form is its own canonical form.
	if again, err := Canonical(got); err != nil || !bytes.Equal(again, got) {
		t.Fatalf("the redacted form read again: %v\n%s", err, again)
	}

	// A session token is committed to like the secret key, after it in
	// the schema's order; instance-role credentials have neither, and
	// the redacted form then has none.
	got, err = Canonical([]byte(strings.Replace(doc, `"secret_key": "SK"`, `"secret_key": "SK", "session_token": "TOK"`, 1)))
	tokWant := strings.Replace(want, `"}},`, `","session_token":"`+c("backup.store.s3.session_token", "TOK")+`"}},`, 1)
	if err != nil || string(got) != tokWant {
		t.Fatalf("with a session token: %v\n got %s\nwant %s", err, got, tokWant)
	}
	got, err = Canonical([]byte(strings.Replace(doc, `"access_key": "AK", "secret_key": "SK"`, `"credentials": "instance_role"`, 1)))
	if err != nil || bytes.Contains(got, []byte("secret_key")) || bytes.Contains(got, []byte("access_key")) || !bytes.Contains(got, []byte(`"credentials":"instance_role"`)) {
		t.Fatalf("instance role: %v\n%s", err, got)
	}
}

// What the node measures (Redacted, from the config it parsed) is what an
// auditor computes from the full document, and from the redacted one.
func TestRedactedIsCanonical(t *testing.T) {
	full, tlsKey := fullDoc(t)
	docs := map[string]string{"tls and s3": full}
	files, _ := filepath.Glob("../../docs/examples/node-*.json")
	if len(files) == 0 {
		t.Fatal("no examples")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs[filepath.Base(f)] = string(b)
	}
	for name, doc := range docs {
		c, err := Parse([]byte(doc))
		if err != nil {
			t.Fatal(name, err)
		}
		before, _ := json.Marshal(c)
		measured, err := c.Redacted()
		if err != nil {
			t.Fatal(name, err)
		}
		if after, _ := json.Marshal(c); !bytes.Equal(before, after) {
			t.Fatalf("%s: Redacted changed the config", name)
		}
		fromFull, err := Canonical([]byte(doc))
		if err != nil {
			t.Fatal(name, err)
		}
		fromRedacted, err := Canonical(measured)
		if err != nil {
			t.Fatal(name, err)
		}
		if !bytes.Equal(measured, fromFull) || !bytes.Equal(measured, fromRedacted) {
			t.Fatalf("%s: the node measures\n%s\nthe full document gives\n%s\nthe redacted one\n%s", name, measured, fromFull, fromRedacted)
		}
	}
	measured, _ := Canonical([]byte(full))
	for _, secret := range []string{strings.Split(tlsKey, "\n")[1], `"secret_key":"s"`} {
		if bytes.Contains(measured, []byte(secret)) {
			t.Fatalf("the redacted form holds %q:\n%s", secret, measured)
		}
	}
	if n := bytes.Count(measured, []byte(`"`+CommitmentPrefix)); n != 2 {
		t.Fatalf("%d commitments, want 2:\n%s", n, measured)
	}
}

// Formatting, member order, escapes and optional members given at their
// zero value do not change the form; any value does.
func TestCanonicalIgnoresFormatting(t *testing.T) {
	base := `{"version":1,"hostname":"db-1","network":{"interfaces":[{"name":"eth0","addresses":["10.0.0.2/24"]}]},"tls":{"ca":"CA","certificate":"CERT","key":"KEY"}}`
	want, err := Canonical([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	for _, same := range []string{
		"\n{ \"version\" : 1,\r\n\t\"hostname\": \"db-1\",\n \"network\": {\"interfaces\": [ {\"name\": \"eth0\", \"addresses\": [\"10.0.0.2/24\"]} ] },\n \"tls\": {\"ca\":\"CA\",\"certificate\":\"CERT\",\"key\":\"KEY\"} }\n",
		`{"tls":{"key":"KEY","certificate":"CERT","ca":"CA"},"network":{"interfaces":[{"addresses":["10.0.0.2/24"],"name":"eth0"}]},"hostname":"db-1","version":1}`,
		`{"version":1,"hostname":"db-\u0031","network":{"interfaces":[{"name":"eth0","addresses":["10.0.0.2\/24"]}]},"tls":{"ca":"CA","certificate":"CERT","key":"\u004bEY"}}`,
		`{"version":1,"hostname":"db-1","network":{"interfaces":[{"name":"eth0","mtu":0,"dhcp4":false,"addresses":["10.0.0.2/24"]}],"routes":[]},"volumes":[],"tls":{"ca":"CA","certificate":"CERT","key":"KEY","revoked_serials":[]}}`,
	} {
		got, err := Canonical([]byte(same))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s\ngives %s (%v)\nwant  %s", same, got, err, want)
		}
	}
	for _, other := range []string{
		strings.Replace(base, "db-1", "db-2", 1),
		strings.Replace(base, "10.0.0.2/24", "10.0.0.3/24", 1),
		strings.Replace(base, `"key":"KEY"`, `"key":"KEY "`, 1),
		strings.Replace(base, `"certificate":"CERT"`, `"certificate":"CERT2"`, 1),
		// An explicit empty allowlist (nobody) is not the default (anyone).
		strings.Replace(base, `"tls"`, `"firewall":{"clients":[]},"tls"`, 1),
	} {
		if got, _ := Canonical([]byte(other)); bytes.Equal(got, want) {
			t.Errorf("%s gives the same form as %s", other, base)
		}
	}
}

func mustCanonical(t *testing.T, doc string) []byte {
	t.Helper()
	b, err := Canonical([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A commitment hides its value (it is keyed with the TLS key: the same S3
// secret under two TLS keys gives unrelated commitments) and binds it (one
// secret changed changes it).
func TestCommitments(t *testing.T) {
	doc := func(tlsKey, s3 string) string {
		return `{"version":1,"hostname":"n1","tls":{"ca":"CA","certificate":"CERT","key":"` + tlsKey + `"},
			"backup":{"region":"r","public_key":"P","store":{"s3":{"endpoint":"e","bucket":"b","access_key":"a","secret_key":"` + s3 + `"}},"sources":[{"kind":"tree","path":"/d"}]}}`
	}
	commitments := func(d string) (tlsC, s3C string) {
		var c Config
		if err := json.Unmarshal(mustCanonical(t, d), &c); err != nil {
			t.Fatal(err)
		}
		return c.TLS.Key, c.Backup.Store.S3.SecretKey
	}
	t1, s1 := commitments(doc("K1", "minioadmin"))
	t2, s2 := commitments(doc("K1", "minioadmin2"))
	t3, s3 := commitments(doc("K2", "minioadmin"))
	for _, c := range []string{t1, s1, t2, s2, t3, s3} {
		if !IsCommitment(c) {
			t.Fatalf("%q is not a commitment", c)
		}
	}
	if t1 != t2 || s1 == s2 {
		t.Errorf("changing the S3 secret: tls %v, s3 %v", t1 != t2, s1 != s2)
	}
	if t1 == t3 || s1 == s3 {
		t.Errorf("changing the TLS key: tls %v, s3 %v", t1 != t3, s1 != s3)
	}
	// The same value in both fields gives two commitments.
	if tc, sc := commitments(doc("same", "same")); tc == sc {
		t.Error("one value in two fields gives one commitment")
	}
	for _, s := range []string{"", "redacted:hmac-sha256:", CommitmentPrefix + strings.Repeat("A", 64), CommitmentPrefix + strings.Repeat("0", 63), "sha256:" + strings.Repeat("0", 64)} {
		if IsCommitment(s) {
			t.Errorf("%q taken for a commitment", s)
		}
	}
}

// The node commits to every secret it holds, even one that looks like a
// commitment: an S3 secret key that is literally the commitment an
// auditor expects does not measure as that commitment. (The node now
// refuses such a config outright; the redaction is checked too, in case
// a config reaches it unvalidated.)
func TestNodeCommitsToEverySecret(t *testing.T) {
	full, _ := fullDoc(t)
	expected := mustCanonical(t, full)
	var r Config
	json.Unmarshal(expected, &r)
	forged := strings.Replace(full, `"secret_key":"s"`, `"secret_key":"`+r.Backup.Store.S3.SecretKey+`"`, 1)
	if _, err := Parse([]byte(forged)); err == nil || !strings.Contains(err.Error(), "backup.store.s3.secret_key") {
		t.Errorf("a config whose S3 secret key is a commitment: %v; want it refused", err)
	}
	c, err := Parse([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	c.Backup.Store.S3.SecretKey = r.Backup.Store.S3.SecretKey
	measured, _ := c.Redacted()
	if bytes.Equal(measured, expected) {
		t.Fatal("a node whose S3 secret key is the expected commitment measures as the expected config")
	}
}

func TestCanonicalRefuses(t *testing.T) {
	full, _ := fullDoc(t)
	redacted := mustCanonical(t, full)
	var r Config
	json.Unmarshal(redacted, &r)
	partial := bytes.Replace(redacted, []byte(r.Backup.Store.S3.SecretKey), []byte("s"), 1)
	noTLS := `{"version":1,"hostname":"n1","backup":{"region":"r","public_key":"P","store":{"s3":{"endpoint":"e","bucket":"b","access_key":"a","secret_key":"minioadmin"}},"sources":[{"kind":"tree","path":"/d"}]}}`
	for _, tc := range []struct {
		name, doc, want string
		redactOnly      bool
	}{
		{"partly redacted", string(partial), "backup.store.s3.secret_key is in the clear but tls.key is redacted", false},
		{"unknown field", `{"version":1,"hostname":"n1","tls":{"ca":"","certificate":"","key":"k","pin":"x"}}`, "tls.pin: unknown field", false},
		{"repeated field", `{"version":1,"hostname":"n1","hostname":"n2"}`, "hostname: field given twice", false},
		{"null", `{"version":1,"hostname":null}`, "hostname: null is not allowed", false},
		{"empty", ``, "the document is empty", false},
		{"incomplete", `{"version":1,"hostname":"n1","ipsec":{"address":"10.0.0.1"}}`, "no canonical redacted form", false},
		{"secret without tls", noTLS, "backup.store.s3.secret_key would be committed to without a key", true},
	} {
		_, err := RedactDocument([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: RedactDocument: %v, want %q", tc.name, err, tc.want)
		}
		_, err = Canonical([]byte(tc.doc))
		if tc.redactOnly != (err == nil) {
			t.Errorf("%s: Canonical: %v", tc.name, err)
		}
		if err != nil && (strings.Contains(err.Error(), "minioadmin") || strings.Contains(err.Error(), `"s"`)) {
			t.Errorf("%s: a secret in the error: %v", tc.name, err)
		}
	}
}

// docs/config.md lists exactly the secret fields the redaction follows.
func TestSecretFieldsDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## Secrets")
	if !ok {
		t.Fatal("docs/config.md has no Secrets section")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	var listed []string
	for _, m := range regexp.MustCompile("(?m)^- `([a-z0-9_.]+)`").FindAllStringSubmatch(sec, -1) {
		listed = append(listed, m[1])
	}
	if !slices.Equal(listed, SecretFields()) {
		t.Fatalf("docs/config.md lists %v as secrets, the code %v", listed, SecretFields())
	}
}

// publicFields have names that suggest a secret but are not one
// (secretFields says why for the access key; credentials names the kind,
// static or instance_role).
var publicFields = []string{"backup.public_key", "backup.store.s3.access_key", "backup.store.s3.credentials"}

// Every string field whose name suggests a secret is classified: a field
// added later (a password, a token) must be put in secretFields or here.
func TestSecretLikeFieldsClassified(t *testing.T) {
	var unclassified []string
	var walk func(t reflect.Type, path string)
	walk = func(t reflect.Type, path string) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			if t.Kind() == reflect.Slice {
				path += "[]"
			}
			t = t.Elem()
		}
		switch t.Kind() {
		case reflect.Struct:
			for name, ft := range jsonFields(t) {
				walk(ft, join(path, name))
			}
		case reflect.String:
			if regexp.MustCompile(`key|secret|pass|token|cred|auth`).MatchString(path[strings.LastIndexByte(path, '.')+1:]) &&
				!slices.Contains(SecretFields(), path) && !slices.Contains(publicFields, path) {
				unclassified = append(unclassified, path)
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	if len(unclassified) > 0 {
		t.Fatalf("fields that may be secrets, in neither secretFields nor publicFields: %v", unclassified)
	}
	for _, p := range append(SecretFields(), publicFields...) {
		if !fieldExists(reflect.TypeOf(Config{}), strings.Split(p, ".")) {
			t.Errorf("%s names no field", p)
		}
	}
}

func fieldExists(t reflect.Type, path []string) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if len(path) == 0 {
		return t.Kind() == reflect.String
	}
	if t.Kind() != reflect.Struct {
		return false
	}
	ft, ok := jsonFields(t)[path[0]]
	return ok && fieldExists(ft, path[1:])
}
