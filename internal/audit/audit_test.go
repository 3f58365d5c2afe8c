package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sample(t *testing.T) *Log {
	t.Helper()
	l := New(nil)
	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	l.clock = func() time.Time { at = at.Add(time.Second); return at }
	for _, r := range [][5]string{
		{KindBoot, "", "", "bulwark booted", "ok"},
		{KindConfig, "", "", "config sha256:ab12", "ok"},
		{KindRequest, "CN=alice,OU=bulwark-role:operator", "1f", "GET /v1/status", "200"},
		{KindRequest, "10.0.0.9:5555", "", "TLS handshake", "refused: no client certificate"},
		{KindShutdown, "", "", "power button", "ok"},
	} {
		if _, err := l.Append(r[0], r[1], r[2], r[3], r[4]); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func lines(b []byte) []string { return strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n") }

func TestVerifyGood(t *testing.T) {
	l := sample(t)
	head, seq := l.Head()
	n, h, err := Verify(bytes.NewReader(l.Bytes()), head)
	if err != nil || n != 5 || h != head || seq != 5 {
		t.Fatalf("n %d head %s err %v", n, h, err)
	}
	// An empty log is valid.
	if n, _, err := Verify(strings.NewReader(""), ""); err != nil || n != 0 {
		t.Fatal(err)
	}
}

func TestVerifyTampering(t *testing.T) {
	l := sample(t)
	orig := lines(l.Bytes())
	head, _ := l.Head()
	join := func(ls []string) *strings.Reader {
		s := strings.Join(ls, "")
		if !strings.HasSuffix(s, "\n") {
			s += "\n"
		}
		return strings.NewReader(s)
	}
	cases := []struct {
		name string
		log  func() []string
		head string
		want string
	}{
		{"edited", func() []string {
			c := append([]string(nil), orig...)
			c[2] = strings.Replace(c[2], "GET /v1/status", "GET /v1/statux", 1)
			return c
		}, "", "line 3 (seq 3): edited"},
		{"one byte", func() []string {
			c := append([]string(nil), orig...)
			b := []byte(c[1])
			b[len(b)-5] ^= 1 // inside the hash
			c[1] = string(b)
			return c
		}, "", "line 2"},
		{"deleted", func() []string {
			return append(append([]string(nil), orig[:1]...), orig[2:]...)
		}, "", "line 2: seq 3 where 2 belongs: record 2 is missing"},
		{"inserted", func() []string {
			c := append([]string(nil), orig[:3]...)
			c = append(c, orig[1])
			return append(c, orig[3:]...)
		}, "", "line 4: seq 2 where 4 belongs"},
		{"reordered", func() []string {
			c := append([]string(nil), orig...)
			c[2], c[3] = c[3], c[2]
			return c
		}, "", "line 3: seq 4 where 3 belongs"},
		{"cut off the end", func() []string { return orig[:4] }, head, "cut off the end"},
		{"garbage", func() []string { return []string{"hello\n"} }, "", "line 1: not an audit record"},
	}
	for _, c := range cases {
		_, _, err := Verify(join(c.log()), c.head)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

// A rewritten chain (a record changed and every later hash recomputed by
// someone without the head) still fails against the head the node reports.
func TestRewrittenChainFailsAgainstHead(t *testing.T) {
	l := sample(t)
	head, _ := l.Head()
	forged := New(nil)
	forged.Append(KindBoot, "", "", "bulwark booted", "ok")
	forged.Append(KindConfig, "", "", "config sha256:ffff", "ok")
	if _, _, err := Verify(bytes.NewReader(forged.Bytes()), ""); err != nil {
		t.Fatal("a self-consistent forged chain should verify without a head")
	}
	if _, _, err := Verify(bytes.NewReader(forged.Bytes()), head); err == nil {
		t.Fatal("a forged chain verified against the real head")
	}
}

func TestAttachWritesEverything(t *testing.T) {
	l := sample(t)
	p := filepath.Join(t.TempDir(), "audit.log")
	if err := l.Attach(p); err != nil {
		t.Fatal(err)
	}
	l.Append(KindRequest, "x", "", "later", "ok")
	// Once attached, the log keeps its records in the file only, and reads
	// copies back from it.
	held := l.Bytes()
	l.Close()
	b, _ := os.ReadFile(p)
	if !bytes.Equal(b, held) {
		t.Fatal("file differs from the log")
	}
	if n, _, err := Verify(bytes.NewReader(b), ""); err != nil || n != 6 {
		t.Fatalf("%d %v", n, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
}
