package cidr

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestParseListMerges(t *testing.T) {
	l, err := ParseList([]string{"10.0.0.0/24", "10.0.1.0/24", "10.0.0.5", "192.168.0.0/16", "192.168.3.0/24", "fd00::/64", "fd00::1", "0.0.0.0/0"})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.String(); got != "0.0.0.0/0, fd00::/64" {
		t.Fatalf("got %s", got)
	}
	l, _ = ParseList([]string{"10.0.0.0/24", "10.0.1.0/24", "10.0.3.7", "::/0"})
	if got := l.String(); got != "10.0.0.0/23, 10.0.3.7, ::/0" {
		t.Fatalf("got %s", got)
	}
	if !l.Contains(netip.MustParseAddr("10.0.1.255")) || l.Contains(netip.MustParseAddr("10.0.2.0")) || !l.Contains(netip.MustParseAddr("2001:db8::1")) {
		t.Fatal("Contains")
	}
	l, _ = ParseList([]string{"255.255.255.255", "255.255.255.254"})
	if got := l.String(); got != "255.255.255.254/31" {
		t.Fatalf("top of the space: %s", got)
	}
}

func TestParseListRejects(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want string
	}{
		{[]string{"10.0.0.0/8", "192.168.1.15/24"}, `[1]: "192.168.1.15/24" has host bits set; did you mean 192.168.1.0/24?`},
		{[]string{"garbage"}, `[0]: "garbage" is neither an address nor a network prefix`},
		{[]string{"10.0.0.0/33"}, `[0]: "10.0.0.0/33" is not a network prefix`},
		{[]string{" 10.0.0.1"}, "surrounding spaces"},
		{[]string{""}, "empty"},
		{[]string{"fe80::1%eth0"}, "zones"},
		{[]string{"::ffff:10.0.0.1"}, "IPv4-mapped"},
	} {
		_, err := ParseList(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.in, err, c.want)
		}
	}
	big := make([]string, MaxEntries+1)
	for i := range big {
		big[i] = fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255)
	}
	if _, err := ParseList(big); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("oversized list: %v", err)
	}
}

func TestIsPrivate(t *testing.T) {
	l, _ := ParseList([]string{"10.1.0.0/16", "172.32.0.0/16", "fd12::/48", "2001:db8::/32"})
	want := []bool{true, false, false, true} // v4 sorted, then v6 sorted
	rs := append(l.V4, l.V6...)
	for i, r := range rs {
		if IsPrivate(r) != want[i] {
			t.Errorf("%s: IsPrivate %v", r, !want[i])
		}
	}
}
