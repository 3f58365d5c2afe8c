package config

import (
	"strings"
	"testing"
)

// TestMetadataClosedByDefault: a config that does not name the metadata
// service leaves it closed, whatever else its firewall section says.
func TestMetadataClosedByDefault(t *testing.T) {
	for _, doc := range []string{
		`{"version":1,"hostname":"n1"}`,
		fw(``),
		fw(`"egress":{}`),
		fw(`"egress":{"dns":["10.0.0.53"],"backup":[{"address":"10.0.0.40","port":443}]}`),
	} {
		c, err := Parse([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		if m := c.Firewall.MetadataEgress(); m != nil {
			t.Errorf("%s: the metadata service is open: %+v", doc, *m)
		}
	}
}

func TestMetadataOpening(t *testing.T) {
	for _, c := range []struct {
		doc  string
		addr string
		port int
		uid  int
	}{
		{fw(`"egress":{"metadata":{"address":"169.254.169.254","port":80,"uid":4242}}`), "169.254.169.254", 80, 4242},
		{fw(`"egress":{"metadata":{"address":"fd00:ec2::254","port":80,"uid":0}}`), "fd00:ec2::254", 80, 0},
		// A backup endpoint on the same host but another port does not
		// widen the opening.
		{fw(`"egress":{"metadata":{"address":"100.100.100.200","port":80,"uid":7},"backup":[{"address":"100.100.100.200","port":443}]}`), "100.100.100.200", 80, 7},
	} {
		cfg, err := Parse([]byte(c.doc))
		if err != nil {
			t.Fatalf("%s: %v", c.doc, err)
		}
		m := cfg.Firewall.MetadataEgress()
		if m == nil || m.Address != c.addr || m.Port != c.port || m.UID == nil || *m.UID != c.uid {
			t.Fatalf("%s: %+v", c.doc, m)
		}
	}
}

// TestMetadataRejects: every bad value is refused with the field's path.
func TestMetadataRejects(t *testing.T) {
	md := func(fields string) string { return fw(`"egress":{"metadata":{` + fields + `}}`) }
	for _, c := range []struct{ name, doc, want string }{
		{"the old list form", fw(`"egress":{"metadata":["169.254.169.254"]}`), "firewall.egress.metadata: must be an object, not an array"},
		{"unknown field", md(`"address":"169.254.169.254","port":80,"uid":1,"uids":[1]`), "firewall.egress.metadata.uids: unknown field"},
		{"no address", md(`"port":80,"uid":1`), "firewall.egress.metadata.address: is required"},
		{"garbage address", md(`"address":"metadata.internal","port":80,"uid":1`), `firewall.egress.metadata.address: "metadata.internal" is not an IP address`},
		{"prefix", md(`"address":"169.254.0.0/16","port":80,"uid":1`), `firewall.egress.metadata.address: "169.254.0.0/16" is not an IP address (a single address, not a prefix)`},
		{"zone", md(`"address":"fe80::1%eth0","port":80,"uid":1`), `firewall.egress.metadata.address: "fe80::1%eth0": zones`},
		{"mapped", md(`"address":"::ffff:169.254.169.254","port":80,"uid":1`), `firewall.egress.metadata.address: "::ffff:169.254.169.254": zones and IPv4-mapped`},
		{"loopback", md(`"address":"127.0.0.1","port":80,"uid":1`), "firewall.egress.metadata.address: 127.0.0.1 is not a unicast address of another host"},
		{"unspecified", md(`"address":"0.0.0.0","port":80,"uid":1`), "firewall.egress.metadata.address: 0.0.0.0 is not"},
		{"multicast", md(`"address":"ff02::1","port":80,"uid":1`), "firewall.egress.metadata.address: ff02::1 is not"},
		{"no port", md(`"address":"169.254.169.254","uid":1`), "firewall.egress.metadata.port: is required"},
		{"port high", md(`"address":"169.254.169.254","port":70000,"uid":1`), "firewall.egress.metadata.port: 70000 is not a TCP port"},
		{"port negative", md(`"address":"169.254.169.254","port":-1,"uid":1`), "firewall.egress.metadata.port: -1 is not a TCP port"},
		{"port string", md(`"address":"169.254.169.254","port":"http","uid":1`), `firewall.egress.metadata.port: must be a whole number, not the string "http"`},
		{"no uid", md(`"address":"169.254.169.254","port":80`), "firewall.egress.metadata.uid: is required"},
		{"uid null", md(`"address":"169.254.169.254","port":80,"uid":null`), "firewall.egress.metadata.uid: null is not allowed"},
		{"uid negative", md(`"address":"169.254.169.254","port":80,"uid":-1`), "firewall.egress.metadata.uid: -1 is out of range (0 to 65534)"},
		{"uid high", md(`"address":"169.254.169.254","port":80,"uid":65535`), "firewall.egress.metadata.uid: 65535 is out of range"},
		{"uid name", md(`"address":"169.254.169.254","port":80,"uid":"postgres"`), `firewall.egress.metadata.uid: must be a whole number, not the string "postgres"`},
		{"uid fraction", md(`"address":"169.254.169.254","port":80,"uid":1.5`), "firewall.egress.metadata.uid: 1.5 is not a whole number"},
		{"also a peer", fw(`"peers":["169.254.0.0/16"],"egress":{"metadata":{"address":"169.254.169.254","port":80,"uid":1}}`),
			"firewall.egress.metadata: 169.254.169.254 port 80 is also open to every process through firewall.peers[0]"},
		{"also a backup endpoint", fw(`"egress":{"backup":[{"address":"169.254.169.254","port":80}],"metadata":{"address":"169.254.169.254","port":80,"uid":1}}`),
			"through firewall.egress.backup[0]"},
		{"also a DNS server", fw(`"egress":{"dns":["10.0.0.2","fd00::/8"],"metadata":{"address":"fd00:ec2::254","port":53,"uid":1}}`),
			"through firewall.egress.dns[1]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.doc))
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "config: ") {
				t.Fatalf("%s:\n got %v\nwant %q", c.doc, err, c.want)
			}
		})
	}
}
