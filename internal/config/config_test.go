package config

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwarkvm/bulwark/internal/pki"
)

func TestExamplesParse(t *testing.T) {
	files, err := filepath.Glob("../../docs/examples/node-*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example configs found: %v", err)
	}
	for _, f := range files {
		doc, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(doc); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestInvalidExampleNamesField(t *testing.T) {
	doc, err := os.ReadFile("../../docs/examples/invalid-mtu.json")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse(doc)
	if err == nil || !strings.Contains(err.Error(), "network.interfaces[0].mtu") {
		t.Fatalf("want an error naming network.interfaces[0].mtu, got %v", err)
	}
}

func TestRejects(t *testing.T) {
	base := func(ifc string) string {
		return `{"version":1,"hostname":"n1","network":{"interfaces":[` + ifc + `]}}`
	}
	cases := []struct{ name, doc, want string }{
		{"empty", ``, "empty"},
		{"not json", `{"version":`, "document ends too early"},
		{"garbage", `hello`, "invalid JSON"},
		{"trailing", `{"version":1,"hostname":"n1"} {}`, "after the end"},
		{"array at top", `[]`, "document: must be an object"},
		{"unknown top", `{"version":1,"hostname":"n1","shell":true}`, `shell: unknown field`},
		{"unknown nested", base(`{"name":"eth0","speed":10}`), `network.interfaces[0].speed: unknown field`},
		{"duplicate key", `{"version":1,"version":1,"hostname":"n1"}`, "version: field given twice"},
		{"wrong type", base(`{"name":"eth0","mtu":"1500"}`), `network.interfaces[0].mtu: must be a whole number, not the string "1500"`},
		{"fraction", base(`{"name":"eth0","mtu":1500.5}`), `network.interfaces[0].mtu: 1500.5 is not a whole number`},
		{"null", `{"version":1,"hostname":null}`, "hostname: null is not allowed"},
		{"bool type", base(`{"name":"eth0","dhcp4":"yes"}`), `network.interfaces[0].dhcp4: must be true or false`},
		{"version", `{"version":2,"hostname":"n1"}`, "version: 2 is not supported"},
		{"no version", `{"hostname":"n1"}`, "version: 0 is not supported"},
		{"hostname missing", `{"version":1}`, "hostname: is required"},
		{"hostname bad", `{"version":1,"hostname":"db_1"}`, "hostname:"},
		{"hostname dash", `{"version":1,"hostname":"-db"}`, "hostname:"},
		{"ifname long", base(`{"name":"averyveryverylongname"}`), "network.interfaces[0].name"},
		{"ifname twice", base(`{"name":"eth0"},{"name":"eth0"}`), "network.interfaces[1].name: interface \"eth0\" is configured twice"},
		{"mtu low", base(`{"name":"eth0","mtu":100}`), "network.interfaces[0].mtu: 100 is out of range"},
		{"mtu v6", base(`{"name":"eth0","mtu":1000,"addresses":["fd00::2/64"]}`), "network.interfaces[0].mtu: 1000 is out of range (1280"},
		{"address garbage", base(`{"name":"eth0","addresses":["10.0.0.300/24"]}`), "network.interfaces[0].addresses[0]"},
		{"address no prefix", base(`{"name":"eth0","addresses":["10.0.0.2"]}`), "network.interfaces[0].addresses[0]"},
		{"address network", base(`{"name":"eth0","addresses":["10.0.0.0/24"]}`), "names the network 10.0.0.0/24"},
		{"address multicast", base(`{"name":"eth0","addresses":["224.0.0.1/24"]}`), "not a unicast host address"},
		{"address twice", base(`{"name":"eth0","addresses":["10.0.0.2/24"]},{"name":"eth1","addresses":["10.0.0.2/24"]}`), "network.interfaces[1].addresses[0]: address 10.0.0.2 is already used by network.interfaces[0].addresses[0]"},
		{"dhcp and static", base(`{"name":"eth0","dhcp4":true,"addresses":["10.0.0.2/24"]}`), "conflict"},
		{"route host bits", `{"version":1,"hostname":"n1","network":{"interfaces":[{"name":"eth0"}],"routes":[{"to":"192.168.1.15/24","via":"10.0.0.1"}]}}`, `network.routes[0].to: "192.168.1.15/24" has host bits set; did you mean 192.168.1.0/24?`},
		{"route family", `{"version":1,"hostname":"n1","network":{"routes":[{"to":"::/0","via":"10.0.0.1"}]}}`, "network.routes[0].via: gateway 10.0.0.1 is not of the same address family"},
		{"route onlink", `{"version":1,"hostname":"n1","network":{"routes":[{"to":"10.1.0.0/16"}]}}`, "network.routes[0]: an on-link route"},
		{"route interface", `{"version":1,"hostname":"n1","network":{"routes":[{"to":"10.1.0.0/16","interface":"eth9"}]}}`, `network.routes[0].interface: "eth9" is not one of`},
		{"volume no disk", vols(`{"name":"data","mount":"/data"}`), "volumes[0]: give the disk's serial or by_id"},
		{"volume both ids", vols(`{"name":"data","serial":"d0","by_id":"virtio-d0","mount":"/data"}`), "not both"},
		{"volume name", vols(`{"name":"Data","serial":"d0","mount":"/data"}`), "volumes[0].name: \"Data\": only lowercase"},
		{"volume name twice", vols(`{"name":"a","serial":"d0","mount":"/a"},{"name":"a","serial":"d1","mount":"/b"}`), "volumes[1].name: \"a\" is also the name of volumes[0]"},
		{"volume disk twice", vols(`{"name":"a","serial":"d0","mount":"/a"},{"name":"b","serial":"d0","mount":"/b"}`), "volumes[1]: serial d0 is also the disk of volumes[0]"},
		{"volume serial space", vols(`{"name":"a","serial":"d 0","mount":"/a"}`), "volumes[0].serial"},
		{"volume mount relative", vols(`{"name":"a","serial":"d0","mount":"data"}`), "volumes[0].mount: \"data\" must be an absolute, clean path"},
		{"volume mount unclean", vols(`{"name":"a","serial":"d0","mount":"/data/../x"}`), "volumes[0].mount"},
		{"volume mount root", vols(`{"name":"a","serial":"d0","mount":"/"}`), "volumes[0].mount"},
		{"volume mount proc", vols(`{"name":"a","serial":"d0","mount":"/proc/x"}`), "inside /proc"},
		{"volume mount nested", vols(`{"name":"a","serial":"d0","mount":"/data"},{"name":"b","serial":"d1","mount":"/data/wal"}`), "volumes[1].mount: \"/data/wal\" overlaps \"/data\""},
		{"volume discard type", vols(`{"name":"a","serial":"d0","mount":"/a","discard":1}`), "volumes[0].discard: must be true or false"},
		{"workload no command", `{"version":1,"hostname":"n1","workload":{"command":[],"uid":70,"gid":70}}`, "workload.command: is required"},
		{"workload relative", `{"version":1,"hostname":"n1","workload":{"command":["postgres"],"uid":70,"gid":70}}`, "workload.command[0]"},
		{"workload root", `{"version":1,"hostname":"n1","workload":{"command":["/usr/bin/x"],"uid":0,"gid":70}}`, "workload.uid: 0"},
		{"workload gid", `{"version":1,"hostname":"n1","workload":{"command":["/usr/bin/x"],"uid":70}}`, "workload.gid: 0"},
		{"fw host bits", fw(`"clients":["10.0.0.0/8","192.168.1.15/24"]`), `firewall.clients[1]: "192.168.1.15/24" has host bits set; did you mean 192.168.1.0/24?`},
		{"fw garbage", fw(`"peers":["10.0.0.2","nope"]`), `firewall.peers[1]: "nope" is neither`},
		{"fw public vpc", fw(`"vpc_networks":["10.0.0.0/8","8.8.8.0/24"]`), "firewall.vpc_networks: 8.8.8.0/24 is not private"},
		{"fw port", fw(`"client_ports":[70000]`), "firewall.client_ports[0]: 70000 is not a TCP port"},
		{"fw port twice", fw(`"client_ports":[5432],"peer_ports":[5432]`), "firewall.peer_ports[0]: port 5432 is also firewall.client_ports[0]"},
		{"fw mgmt port clash", fw(`"management_port":5432`), "firewall.management_port: port 5432 is also"},
		{"fw blocked", fw(`"blocked":"ignore"`), `firewall.blocked: "ignore"`},
		{"fw backup port", fw(`"egress":{"backup":[{"address":"203.0.113.10","port":0}]}`), "firewall.egress.backup[0].port"},
		{"fw null clients", fw(`"clients":null`), "firewall.clients: null is not allowed"},
		{"too large", `{"version":1,"hostname":"` + strings.Repeat("a", MaxSize) + `"}`, "the limit is"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.doc))
			if err == nil {
				t.Fatalf("accepted %s", c.doc)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
			if !strings.HasPrefix(err.Error(), "config: ") {
				t.Fatalf("error %q lacks the config: prefix", err)
			}
		})
	}
}

func fw(f string) string {
	return `{"version":1,"hostname":"n1","firewall":{` + f + `}}`
}

func vols(v string) string {
	return `{"version":1,"hostname":"n1","volumes":[` + v + `]}`
}

func TestDigestStable(t *testing.T) {
	a, b := Digest([]byte("x")), Digest([]byte("y"))
	if len(a) != 64 || a == b {
		t.Fatalf("digests %s %s", a, b)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{`{"version":1,"hostname":"n"}`, `{"network":{"interfaces":[{}]}}`, `[1,2]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		c, err := Parse(doc)
		if err == nil && c.Validate() != nil {
			t.Fatalf("Parse accepted a config that Validate rejects")
		}
		if err != nil && !strings.HasPrefix(err.Error(), "config: ") {
			t.Fatalf("unprefixed error %v", err)
		}
	})
}

// backupDoc is a node with one volume, a workload and a backup section;
// mutate replaces one field of the backup section.
func backupDoc(t *testing.T, bits int, mutate string) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	key, _ := json.Marshal(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	sec := `"region":"eu-north-1","public_key":` + string(key) + `,
		"store":{"s3":{"endpoint":"https://10.99.0.40:9000","bucket":"backups","access_key":"a","secret_key":"s","ca":` + s3CA(t) + `}},
		"sources":[{"kind":"tree","path":"/data/pg"},{"kind":"spool","path":"/data/wal"},{"kind":"command","command":["/usr/bin/pg_basebackup","-D","-"]}]`
	if mutate != "" {
		sec = mutate
	}
	if strings.HasPrefix(mutate, "+") {
		sec = `"public_key":` + string(key) + `,` + mutate[1:]
	}
	return `{"version":1,"hostname":"n1","volumes":[{"name":"data","serial":"d0","mount":"/data"}],
		"workload":{"command":["/usr/bin/x"],"uid":70,"gid":70},
		"firewall":{"egress":{"backup":[{"address":"10.99.0.40","port":9000}]}},
		"backup":{` + sec + `}}`
}

// s3CA is a JSON string holding a CA certificate.
func s3CA(t *testing.T) string {
	t.Helper()
	ca, err := pki.Init(t.TempDir(), "s3", pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(string(ca.PEM))
	return string(j)
}

func TestBackupSection(t *testing.T) {
	c, err := Parse([]byte(backupDoc(t, 3072, "")))
	if err != nil {
		t.Fatal(err)
	}
	if c.Backup.EffectiveSegmentMiB() != 64 || len(c.Backup.Sources) != 3 || c.Backup.FinalOnShutdown {
		t.Fatalf("%+v", c.Backup)
	}
	store := `"store":{"dir":"/data/bk"},"sources":[{"kind":"tree","path":"/data"}]`
	for _, tc := range []struct{ name, mutate, want string }{
		{"no region", `+"store":{"dir":"/data/bk"},"sources":[{"kind":"tree","path":"/data"}]`, "backup.region"},
		{"two stores", `+"region":"r","store":{"dir":"/data/bk","s3":{"endpoint":"https://a","bucket":"bkt","access_key":"a","secret_key":"s"}},"sources":[{"kind":"tree","path":"/data"}]`, "backup.store: give exactly one"},
		{"no store", `+"region":"r","store":{},"sources":[{"kind":"tree","path":"/data"}]`, "backup.store: give exactly one"},
		{"http", `+"region":"r","store":{"s3":{"endpoint":"http://10.99.0.40:9000","bucket":"bkt","access_key":"a","secret_key":"s"}},"sources":[{"kind":"tree","path":"/data"}]`, "must be https"},
		{"not in egress", `+"region":"r","store":{"s3":{"endpoint":"https://10.99.0.41:9000","bucket":"bkt","access_key":"a","secret_key":"s"}},"sources":[{"kind":"tree","path":"/data"}]`, "not in firewall.egress.backup"},
		{"bucket", `+"region":"r","store":{"s3":{"endpoint":"https://10.99.0.40:9000","bucket":"Bad_Bucket","access_key":"a","secret_key":"s"}},"sources":[{"kind":"tree","path":"/data"}]`, "backup.store.s3.bucket"},
		{"no keys", `+"region":"r","store":{"s3":{"endpoint":"https://10.99.0.40:9000","bucket":"bkt"}},"sources":[{"kind":"tree","path":"/data"}]`, "access_key and secret_key"},
		// A redacted config given to a node by mistake: its commitment is
		// no secret, and would be measured as a commitment of itself.
		{"commitment as secret", `+"region":"r","store":{"s3":{"endpoint":"https://10.99.0.40:9000","bucket":"bkt","access_key":"a","secret_key":"` + CommitmentPrefix + strings.Repeat("ab", 32) + `","ca":` + s3CA(t) + `}},"sources":[{"kind":"tree","path":"/data"}]`, "backup.store.s3.secret_key: this is a redacted config's commitment"},
		{"https without ca", `+"region":"r","store":{"s3":{"endpoint":"https://10.99.0.40:9000","bucket":"bkt","access_key":"a","secret_key":"s"}},"sources":[{"kind":"tree","path":"/data"}]`, "backup.store.s3.ca: an https endpoint needs"},
		{"ca not a certificate", `+"region":"r","store":{"s3":{"endpoint":"https://10.99.0.40:9000","bucket":"bkt","access_key":"a","secret_key":"s","ca":"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}},"sources":[{"kind":"tree","path":"/data"}]`, "backup.store.s3.ca: pki: certificate 1: a PEM PUBLIC KEY block"},
		{"ca garbage", `+"region":"r","store":{"s3":{"endpoint":"https://10.99.0.40:9000","bucket":"bkt","access_key":"a","secret_key":"s","ca":"hello"}},"sources":[{"kind":"tree","path":"/data"}]`, "backup.store.s3.ca: pki: certificate 1: not PEM"},
		{"path off volume", `+"region":"r",` + strings.Replace(store, `"path":"/data"`, `"path":"/etc"`, 1), "backup.sources[0].path"},
		{"kind", `+"region":"r",` + strings.Replace(store, `"tree"`, `"disk"`, 1), "backup.sources[0].kind"},
		{"no sources", `+"region":"r","store":{"dir":"/data/bk"},"sources":[]`, "backup.sources: 0 sources"},
		{"interval", `+"region":"r","interval_seconds":5,` + store, "backup.interval_seconds: 5"},
		{"segment", `+"region":"r","segment_mib":9000,` + store, "backup.segment_mib: 9000"},
		{"final not a bool", `+"region":"r","final_on_shutdown":"yes",` + store, "backup.final_on_shutdown"},
		{"command relative", `+"region":"r","store":{"dir":"/data/bk"},"sources":[{"kind":"command","command":["pg_basebackup"]}]`, "backup.sources[0].command"},
	} {
		if _, err := Parse([]byte(backupDoc(t, 3072, tc.mutate))); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := Parse([]byte(backupDoc(t, 2048, ""))); err == nil || !strings.Contains(err.Error(), "backup.public_key: an RSA key of 2048 bits, not 3072") {
		t.Errorf("2048-bit key: %v", err)
	}
}

// TestS3CredentialsAndAddressing: the S3 fields added with the minio-go
// client (credentials, session_token, addressing, expected_bucket_owner)
// are accepted in their valid forms and refused otherwise, naming the
// field.
func TestS3CredentialsAndAddressing(t *testing.T) {
	ca := s3CA(t)
	doc := func(s3, metadata string) string {
		d := backupDoc(t, 3072, `+"region":"r","store":{"s3":{`+s3+`,"ca":`+ca+`}},"sources":[{"kind":"tree","path":"/data"}]`)
		if metadata != "" {
			d = strings.Replace(d, `"egress":{`, `"egress":{"metadata":`+metadata+`,`, 1)
		}
		return d
	}
	const ip = `"endpoint":"https://10.99.0.40:9000","bucket":"bkt"`
	const name = `"endpoint":"https://s3.eu-north-1.amazonaws.com","bucket":"bkt"`
	const imds = `{"address":"169.254.169.254","port":80,"uid":61004}`
	for _, tc := range []struct{ name, s3, metadata string }{
		{"static with a session token", ip + `,"access_key":"a","secret_key":"s","session_token":"tok"`, ""},
		{"static named", ip + `,"credentials":"static","access_key":"a","secret_key":"s"`, ""},
		{"instance role", ip + `,"credentials":"instance_role"`, imds},
		{"virtual", name + `,"addressing":"virtual","access_key":"a","secret_key":"s"`, ""},
		{"path", ip + `,"addressing":"path","access_key":"a","secret_key":"s","expected_bucket_owner":"123456789012"`, ""},
	} {
		if _, err := Parse([]byte(doc(tc.s3, tc.metadata))); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	for _, tc := range []struct{ name, s3, metadata, want string }{
		{"unknown credentials", ip + `,"credentials":"env","access_key":"a","secret_key":"s"`, "", `backup.store.s3.credentials: "env" is not static or instance_role`},
		{"instance role with a key", ip + `,"credentials":"instance_role","access_key":"a"`, imds, "backup.store.s3.access_key: must be absent with credentials instance_role"},
		{"instance role with a secret", ip + `,"credentials":"instance_role","secret_key":"s"`, imds, "backup.store.s3.secret_key: must be absent"},
		{"instance role with a token", ip + `,"credentials":"instance_role","session_token":"t"`, imds, "backup.store.s3.session_token: must be absent"},
		{"instance role, metadata closed", ip + `,"credentials":"instance_role"`, "", "backup.store.s3.credentials: instance_role reads the role's credentials from the metadata service at 169.254.169.254 port 80"},
		{"instance role, metadata for another uid", ip + `,"credentials":"instance_role"`, `{"address":"169.254.169.254","port":80,"uid":4242}`, "firewall.egress.metadata.uid to be the backup process's uid, 61004"},
		{"token without keys", ip + `,"session_token":"t"`, "", "access_key and secret_key are required"},
		{"token a commitment", ip + `,"access_key":"a","secret_key":"s","session_token":"` + CommitmentPrefix + strings.Repeat("ab", 32) + `"`, "", "backup.store.s3.session_token: this is a redacted config's commitment"},
		{"addressing", ip + `,"addressing":"dns","access_key":"a","secret_key":"s"`, "", `backup.store.s3.addressing: "dns" is not path or virtual`},
		{"virtual on an IP", ip + `,"addressing":"virtual","access_key":"a","secret_key":"s"`, "", "backup.store.s3.addressing: virtual needs a host name"},
		{"virtual with a dotted bucket", `"endpoint":"https://s3.eu-north-1.amazonaws.com","bucket":"my.bkt","addressing":"virtual","access_key":"a","secret_key":"s"`, "", `backup.store.s3.addressing: virtual with the bucket "my.bkt" over https`},
		{"instance role with two static fields", ip + `,"credentials":"instance_role","secret_key":"s","session_token":"t"`, imds, "backup.store.s3.secret_key: must be absent"},
		{"owner", ip + `,"access_key":"a","secret_key":"s","expected_bucket_owner":"12345678901x"`, "", `backup.store.s3.expected_bucket_owner: "12345678901x" is not a 12-digit AWS account id`},
	} {
		if _, err := Parse([]byte(doc(tc.s3, tc.metadata))); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}
