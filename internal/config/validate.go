package config

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bulwarkvm/bulwark/internal/cidr"
	"github.com/bulwarkvm/bulwark/internal/objstore"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

// Limits on list lengths; they keep a mistaken config from turning into a
// very slow boot.
const (
	maxInterfaces = 16
	maxAddresses  = 64
	maxRoutes     = 256
	minMTU        = 576
	minMTUv6      = 1280
	maxMTU        = 9216
	maxVolumes    = 16
)

// BackupUID is the uid of the backup process, the only one that needs
// the metadata service (instance-role credentials). init/backup.go runs
// the process as this uid (its backupUID, the same number).
const BackupUID = 61004

// imdsAddress is where the S3 client asks for instance-role credentials
// (minio-go's default IMDS endpoint).
const imdsAddress = "169.254.169.254"

// Validate checks every field; the first problem is returned with its path.
func (c *Config) Validate() error {
	if c.Version != Version {
		return fmt.Errorf("version: %d is not supported; this build reads version %d", c.Version, Version)
	}
	if err := checkHostname(c.Hostname); err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	if err := c.Network.validate(); err != nil {
		return err
	}
	if err := validateVolumes(c.Volumes); err != nil {
		return err
	}
	if c.Workload != nil {
		if err := c.Workload.validate(); err != nil {
			return err
		}
	}
	if c.Firewall != nil {
		if err := c.Firewall.validate(); err != nil {
			return err
		}
	}
	if c.TLS != nil {
		if err := c.TLS.validate(); err != nil {
			return err
		}
	}
	if err := c.validateFrontDoor(); err != nil {
		return err
	}
	if c.IPsec != nil {
		if err := c.validateIPsec(); err != nil {
			return err
		}
	}
	if err := c.checkMetadataAlone(); err != nil {
		return err
	}
	if c.Backup != nil {
		return c.validateBackup()
	}
	return nil
}

// checkMetadataAlone refuses a metadata opening that another opening
// would widen: outbound connections to peers (any port), to a backup
// endpoint or to a DNS server are allowed for every process, so the
// metadata address there would not be limited to its uid.
func (c *Config) checkMetadataAlone() error {
	m := c.Firewall.MetadataEgress()
	if m == nil {
		return nil
	}
	a, err := netip.ParseAddr(m.Address)
	if err != nil {
		return nil // refused with its own message by Firewall.validate
	}
	in := func(entry string) bool {
		p, err := cidr.ParseEntry(entry)
		return err == nil && p.Contains(a)
	}
	var other string
	f := c.Firewall
	for i, e := range f.Peers {
		if in(e) {
			other = fmt.Sprintf("firewall.peers[%d]", i)
		}
	}
	if c.IPsec != nil {
		for i, p := range c.IPsec.Peers {
			if in(p.Address) {
				other = fmt.Sprintf("ipsec.peers[%d].address", i)
			}
		}
	}
	for i, e := range f.Egress.Backup {
		if e.Port == m.Port && in(e.Address) {
			other = fmt.Sprintf("firewall.egress.backup[%d]", i)
		}
	}
	for i, e := range f.Egress.DNS {
		if m.Port == 53 && in(e) {
			other = fmt.Sprintf("firewall.egress.dns[%d]", i)
		}
	}
	if other != "" {
		return fmt.Errorf("firewall.egress.metadata: %s port %d is also open to every process through %s; the metadata service must be reachable by firewall.egress.metadata.uid alone", a, m.Port, other)
	}
	return nil
}

func (c *Config) validateBackup() error {
	b := c.Backup
	if b.Region == "" || len(b.Region) > 64 || strings.ContainsAny(b.Region, " /\"") {
		return fmt.Errorf("backup.region: %q is not a region name", b.Region)
	}
	if err := checkBackupKey(b.PublicKey); err != nil {
		return fmt.Errorf("backup.public_key: %w", err)
	}
	if len(c.Volumes) == 0 {
		return errors.New("backup: needs a data volume (segments are staged on the first one before upload)")
	}
	switch st := b.Store; {
	case (st.Dir == "") == (st.S3 == nil):
		return errors.New("backup.store: give exactly one of dir and s3")
	case st.Dir != "":
		if !path.IsAbs(st.Dir) || path.Clean(st.Dir) != st.Dir {
			return fmt.Errorf("backup.store.dir: %q is not a clean absolute path", st.Dir)
		}
	default:
		if err := c.validateS3(st.S3); err != nil {
			return err
		}
	}
	if b.SegmentMiB != 0 && (b.SegmentMiB < 1 || b.SegmentMiB > 4096) {
		return fmt.Errorf("backup.segment_mib: %d is out of range (1 to 4096)", b.SegmentMiB)
	}
	if b.IntervalSeconds != 0 && (b.IntervalSeconds < 60 || b.IntervalSeconds > 604800) {
		return fmt.Errorf("backup.interval_seconds: %d is out of range (60 to 604800, or 0 for on request only)", b.IntervalSeconds)
	}
	if len(b.Sources) == 0 || len(b.Sources) > 16 {
		return fmt.Errorf("backup.sources: %d sources; give 1 to 16", len(b.Sources))
	}
	for i, src := range b.Sources {
		at := fmt.Sprintf("backup.sources[%d]", i)
		switch src.Kind {
		case "tree", "spool":
			if len(src.Command) > 0 {
				return fmt.Errorf("%s.command: only a command source has one", at)
			}
			if !c.onVolume(src.Path) {
				return fmt.Errorf("%s.path: %q is not a clean absolute path on a data volume", at, src.Path)
			}
		case "command":
			if src.Path != "" {
				return fmt.Errorf("%s.path: a command source has no path", at)
			}
			if len(src.Command) == 0 || !path.IsAbs(src.Command[0]) {
				return fmt.Errorf("%s.command: give the program as an absolute path, then its arguments", at)
			}
			if c.Workload == nil {
				return fmt.Errorf("%s: a command source runs as the workload's user; there is no workload", at)
			}
		default:
			return fmt.Errorf("%s.kind: %q is not tree, command or spool", at, src.Kind)
		}
	}
	return nil
}

// onVolume says whether p is a clean absolute path at or below a volume's
// mount point.
func (c *Config) onVolume(p string) bool {
	if !path.IsAbs(p) || path.Clean(p) != p {
		return false
	}
	for _, v := range c.Volumes {
		if p == v.Mount || strings.HasPrefix(p, v.Mount+"/") {
			return true
		}
	}
	return false
}

func (c *Config) validateS3(s *S3) error {
	// The endpoint appears in errors only through objstore.RedactURL: a
	// password pasted into the URL must not reach the console.
	u, err := url.Parse(s.Endpoint)
	if err == nil && u.User != nil {
		return fmt.Errorf("backup.store.s3.endpoint: %q carries user information (a name or password); give the credentials in access_key and secret_key", objstore.RedactURL(s.Endpoint))
	}
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("backup.store.s3.endpoint: %q is not https://host[:port]", objstore.RedactURL(s.Endpoint))
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && s.AllowHTTP) {
		return fmt.Errorf("backup.store.s3.endpoint: %q must be https (or set allow_http)", objstore.RedactURL(s.Endpoint))
	}
	if n := len(s.Bucket); n < 3 || n > 63 || strings.ToLower(s.Bucket) != s.Bucket || strings.ContainsAny(s.Bucket, "/ _") {
		return fmt.Errorf("backup.store.s3.bucket: %q is not an S3 bucket name", s.Bucket)
	}
	switch s.Credentials {
	case "", "static":
		if s.AccessKey == "" || s.SecretKey == "" {
			return errors.New("backup.store.s3: access_key and secret_key are required (or credentials: instance_role)")
		}
	case "instance_role":
		// In a fixed order, so that the error names the same field
		// each time.
		for _, f := range []struct{ name, v string }{{"access_key", s.AccessKey}, {"secret_key", s.SecretKey}, {"session_token", s.SessionToken}} {
			if f.v != "" {
				return fmt.Errorf("backup.store.s3.%s: must be absent with credentials instance_role (the role's credentials come from the metadata service)", f.name)
			}
		}
		// The credentials come from the metadata service, which the
		// firewall closes unless the config opens it to one uid.
		if m := c.Firewall.MetadataEgress(); m == nil || m.Address != imdsAddress || m.Port != 80 {
			return fmt.Errorf("backup.store.s3.credentials: instance_role reads the role's credentials from the metadata service at %s port 80: open it in firewall.egress.metadata to the backup process's uid (%d)", imdsAddress, BackupUID)
		} else if m.UID == nil || *m.UID != BackupUID {
			return fmt.Errorf("backup.store.s3.credentials: instance_role needs firewall.egress.metadata.uid to be the backup process's uid, %d: only that uid may reach the metadata service", BackupUID)
		}
	default:
		return fmt.Errorf("backup.store.s3.credentials: %q is not static or instance_role", s.Credentials)
	}
	// A redacted config holds commitments where the secrets were: one on
	// a node would be measured as the commitment of itself, and no
	// auditor's copy would match.
	for _, f := range []struct{ name, v string }{{"secret_key", s.SecretKey}, {"session_token", s.SessionToken}} {
		if strings.HasPrefix(f.v, CommitmentPrefix) {
			return fmt.Errorf("backup.store.s3.%s: this is a redacted config's commitment, not the secret: give the node the full config", f.name)
		}
	}
	if s.SessionToken != "" && len(s.SessionToken) > 8192 {
		return fmt.Errorf("backup.store.s3.session_token: %d bytes; STS tokens are far shorter", len(s.SessionToken))
	}
	switch s.Addressing {
	case "", "path":
	case "virtual":
		// The bucket goes in front of the host name: an IP address has
		// no names below it.
		if _, err := netip.ParseAddr(u.Hostname()); err == nil {
			return fmt.Errorf("backup.store.s3.addressing: virtual needs a host name in the endpoint, not the IP address %s", u.Hostname())
		}
		// A dot in the bucket adds a label to the host name, which a
		// TLS certificate for *.host does not cover.
		if strings.Contains(s.Bucket, ".") && u.Scheme == "https" {
			return fmt.Errorf("backup.store.s3.addressing: virtual with the bucket %q over https: a bucket name with dots is not covered by the endpoint's wildcard certificate; use addressing path", s.Bucket)
		}
	default:
		return fmt.Errorf("backup.store.s3.addressing: %q is not path or virtual", s.Addressing)
	}
	if o := s.ExpectedBucketOwner; o != "" {
		if len(o) != 12 || strings.Trim(o, "0123456789") != "" {
			return fmt.Errorf("backup.store.s3.expected_bucket_owner: %q is not a 12-digit AWS account id", o)
		}
	}
	// An IP endpoint must be open in the firewall's egress, or every
	// upload would be refused at the node's own firewall.
	if addr, err := netip.ParseAddr(u.Hostname()); err == nil {
		port := 443
		if u.Scheme == "http" {
			port = 80
		}
		if p := u.Port(); p != "" {
			port, _ = strconv.Atoi(p)
		}
		if !c.egressAllows(addr, port) {
			return fmt.Errorf("backup.store.s3.endpoint: %s port %d is not in firewall.egress.backup, so the firewall would refuse every upload", addr, port)
		}
	}
	switch {
	case u.Scheme == "https" && s.CA == "":
		return errors.New("backup.store.s3.ca: an https endpoint needs the PEM certificates of the CA that signs its certificate (the image has no system root store)")
	case s.CA != "":
		if _, err := pki.ParsePool([]byte(s.CA)); err != nil {
			return fmt.Errorf("backup.store.s3.ca: %w", err)
		}
	}
	return nil
}

func (c *Config) egressAllows(a netip.Addr, port int) bool {
	if c.Firewall == nil {
		return false
	}
	for _, e := range c.Firewall.Egress.Backup {
		if e.Port != port {
			continue
		}
		if p, err := netip.ParsePrefix(e.Address); err == nil && p.Contains(a) {
			return true
		}
		if b, err := netip.ParseAddr(e.Address); err == nil && b == a {
			return true
		}
	}
	return false
}

// checkBackupKey checks that s is a PEM RSA-3072 public key. (The backup
// package parses it the same way; the config package stays free of it.)
func checkBackupKey(s string) error {
	blk, _ := pem.Decode([]byte(s))
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return errors.New(`no PEM "PUBLIC KEY" block`)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return err
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("a %T key, not RSA", k)
	}
	if rk.N.BitLen() != 3072 {
		return fmt.Errorf("an RSA key of %d bits, not 3072", rk.N.BitLen())
	}
	return nil
}

func (c *Config) validateIPsec() error {
	s := c.IPsec
	if c.TLS == nil {
		return errors.New("ipsec: needs the tls section (peers authenticate with node certificates)")
	}
	self, err := netip.ParseAddr(s.Address)
	if err != nil || self.Zone() != "" || !self.IsGlobalUnicast() && !self.IsPrivate() {
		return fmt.Errorf("ipsec.address: %q is not a unicast address", s.Address)
	}
	if len(s.Peers) == 0 || len(s.Peers) > 64 {
		return fmt.Errorf("ipsec.peers: %d peers; give 1 to 64", len(s.Peers))
	}
	seen := map[netip.Addr]int{}
	for i, p := range s.Peers {
		at := fmt.Sprintf("ipsec.peers[%d]", i)
		if err := checkHostname(p.Name); err != nil {
			return fmt.Errorf("%s.name: %w", at, err)
		}
		a, err := netip.ParseAddr(p.Address)
		if err != nil || a.Zone() != "" {
			return fmt.Errorf("%s.address: %q is not an IP address", at, p.Address)
		}
		if a == self {
			return fmt.Errorf("%s.address: %s is this node's own ipsec.address", at, a)
		}
		if a.Is4() != self.Is4() {
			return fmt.Errorf("%s.address: %s is not of the same family as ipsec.address %s", at, a, self)
		}
		if j, dup := seen[a]; dup {
			return fmt.Errorf("%s.address: %s is also ipsec.peers[%d]", at, a, j)
		}
		seen[a] = i
	}
	if s.RekeySeconds != 0 && (s.RekeySeconds < 10 || s.RekeySeconds > 86400) {
		return fmt.Errorf("ipsec.rekey_seconds: %d is out of range (10 to 86400)", s.RekeySeconds)
	}
	if s.GraceSeconds != 0 && (s.GraceSeconds < 1 || s.GraceSeconds > 600) {
		return fmt.Errorf("ipsec.grace_seconds: %d is out of range (1 to 600)", s.GraceSeconds)
	}
	return nil
}

func (t *TLS) validate() error {
	ca, err := pki.ParseCertificate([]byte(t.CA))
	if err != nil {
		return fmt.Errorf("tls.ca: %w", err)
	}
	if !ca.IsCA {
		return fmt.Errorf("tls.ca: %q is not a CA certificate", ca.Subject)
	}
	cert, err := pki.ParseCertificate([]byte(t.Certificate))
	if err != nil {
		return fmt.Errorf("tls.certificate: %w", err)
	}
	key, err := pki.ParseKey([]byte(t.Key))
	if err != nil {
		// The key's bytes never go into an error message.
		return errors.New("tls.key: not a PEM PKCS#8 private key")
	}
	if !pki.KeyMatches(cert, key) {
		return errors.New("tls.key: does not belong to tls.certificate")
	}
	for i, s := range t.RevokedSerials {
		if _, ok := new(big.Int).SetString(s, 16); !ok || s != strings.ToLower(s) {
			return fmt.Errorf("tls.revoked_serials[%d]: %q is not a lowercase hex serial", i, s)
		}
	}
	if err := pki.Verify(ca, cert, x509.ExtKeyUsageServerAuth, t.RevokedSerials, time.Now()); err != nil {
		return fmt.Errorf("tls.certificate: %w", err)
	}
	return nil
}

func (c *Config) validateFrontDoor() error {
	if len(c.FrontDoor) > 0 && c.TLS == nil {
		return errors.New("front_door: needs the tls section (the node's certificate)")
	}
	ports := c.Firewall.EffectiveClientPorts()
	seen := map[int]int{}
	for i, f := range c.FrontDoor {
		at := fmt.Sprintf("front_door[%d]", i)
		if !slices.Contains(ports, f.Port) {
			return fmt.Errorf("%s.port: %d is not one of the client ports %v", at, f.Port, ports)
		}
		if j, dup := seen[f.Port]; dup {
			return fmt.Errorf("%s.port: %d is also front_door[%d]", at, f.Port, j)
		}
		seen[f.Port] = i
		switch f.Protocol {
		case "postgres", "tls":
		default:
			return fmt.Errorf("%s.protocol: %q; use \"postgres\" or \"tls\"", at, f.Protocol)
		}
		if err := checkBackend(f.Backend); err != nil {
			return fmt.Errorf("%s.backend: %w", at, err)
		}
		if f.MaxPerSource < 0 || f.MaxPerSource > 100000 {
			return fmt.Errorf("%s.max_per_source: %d is out of range (1 to 100000, or leave it out for 64)", at, f.MaxPerSource)
		}
		if f.MaxConnections < 0 || f.MaxConnections > 30000 {
			return fmt.Errorf("%s.max_connections: %d is out of range (1 to 30000, or leave it out for 1024)", at, f.MaxConnections)
		}
		if f.IdleTimeoutSeconds < 0 || f.IdleTimeoutSeconds > 7*86400 {
			return fmt.Errorf("%s.idle_timeout_seconds: %d is out of range (1 to 604800, or leave it out for 1800)", at, f.IdleTimeoutSeconds)
		}
	}
	return nil
}

// checkBackend accepts a loopback TCP address or a unix socket path: the
// workload must never listen where the network could reach it.
func checkBackend(b string) error {
	if p, ok := strings.CutPrefix(b, "unix:"); ok {
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p {
			return fmt.Errorf("%q: the socket path must be absolute and clean", b)
		}
		return nil
	}
	ap, err := netip.ParseAddrPort(b)
	if err != nil {
		return fmt.Errorf("%q is neither host:port nor unix:/path", b)
	}
	if !ap.Addr().IsLoopback() {
		return fmt.Errorf("%q is not a loopback address; the workload must not listen on the network", b)
	}
	return nil
}

// Firewall defaults.
const (
	DefaultClientPort     = 5432
	DefaultKeyingPort     = 7443
	DefaultManagementPort = 9443
)

func (f *Firewall) validate() error {
	ports := map[int]string{}
	checkPort := func(path string, p int) error {
		if p < 1 || p > 65535 {
			return fmt.Errorf("%s: %d is not a TCP port (1 to 65535)", path, p)
		}
		if other, dup := ports[p]; dup {
			return fmt.Errorf("%s: port %d is also %s", path, p, other)
		}
		ports[p] = path
		return nil
	}
	for i, p := range f.ClientPorts {
		if err := checkPort(fmt.Sprintf("firewall.client_ports[%d]", i), p); err != nil {
			return err
		}
	}
	if len(f.ClientPorts) == 0 {
		ports[DefaultClientPort] = "the default client port"
	}
	for i, p := range f.PeerPorts {
		if err := checkPort(fmt.Sprintf("firewall.peer_ports[%d]", i), p); err != nil {
			return err
		}
	}
	if err := checkPort("firewall.keying_port", f.EffectiveKeyingPort()); err != nil {
		return err
	}
	if err := checkPort("firewall.management_port", f.EffectiveManagementPort()); err != nil {
		return err
	}
	lists := []struct {
		path    string
		entries []string
	}{
		{"firewall.vpc_networks", f.VPCNetworks},
		{"firewall.peers", f.Peers},
		{"firewall.management_sources", f.ManagementSources},
		{"firewall.egress.dns", f.Egress.DNS},
		{"firewall.egress.ntp", f.Egress.NTP},
	}
	if f.Clients != nil {
		lists = append(lists, struct {
			path    string
			entries []string
		}{"firewall.clients", *f.Clients})
	}
	for _, l := range lists {
		if _, err := cidr.ParseList(l.entries); err != nil {
			return fmt.Errorf("%s%w", l.path, err)
		}
	}
	vpc, _ := cidr.ParseList(f.VPCNetworks)
	for _, r := range append(vpc.V4, vpc.V6...) {
		if !cidr.IsPrivate(r) {
			return fmt.Errorf("firewall.vpc_networks: %s is not private address space (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7); VPC mode never admits public addresses", r)
		}
	}
	for i, e := range f.Egress.Backup {
		path := fmt.Sprintf("firewall.egress.backup[%d]", i)
		if _, err := cidr.ParseEntry(e.Address); err != nil {
			return fmt.Errorf("%s.address: %w", path, err)
		}
		if e.Port < 1 || e.Port > 65535 {
			return fmt.Errorf("%s.port: %d is not a TCP port (1 to 65535)", path, e.Port)
		}
	}
	if m := f.Egress.Metadata; m != nil {
		if err := m.validate(); err != nil {
			return err
		}
	}
	switch f.Blocked {
	case "", "reject", "drop":
	default:
		return fmt.Errorf("firewall.blocked: %q; use \"reject\" or \"drop\"", f.Blocked)
	}
	return nil
}

// validate checks the metadata opening: all three fields given, one
// address a host could connect to, a TCP port, a uid in the range the
// node's users have.
func (m *Metadata) validate() error {
	const at = "firewall.egress.metadata"
	a, err := netip.ParseAddr(m.Address)
	switch {
	case m.Address == "":
		return fmt.Errorf("%s.address: is required (the metadata service's IP address, such as 169.254.169.254)", at)
	case err != nil:
		return fmt.Errorf("%s.address: %q is not an IP address (a single address, not a prefix)", at, m.Address)
	case a.Zone() != "" || a.Is4In6():
		return fmt.Errorf("%s.address: %q: zones and IPv4-mapped IPv6 addresses are not allowed", at, m.Address)
	case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback():
		return fmt.Errorf("%s.address: %s is not a unicast address of another host", at, a)
	}
	if m.Port == 0 {
		return fmt.Errorf("%s.port: is required (the metadata service's TCP port, 80 at the major clouds)", at)
	}
	if m.Port < 1 || m.Port > 65535 {
		return fmt.Errorf("%s.port: %d is not a TCP port (1 to 65535)", at, m.Port)
	}
	if m.UID == nil {
		return fmt.Errorf("%s.uid: is required: the one local user whose connections may reach the metadata service", at)
	}
	if *m.UID < 0 || *m.UID > 65534 {
		return fmt.Errorf("%s.uid: %d is out of range (0 to 65534)", at, *m.UID)
	}
	return nil
}

func (w *Workload) validate() error {
	if len(w.Command) == 0 {
		return fmt.Errorf("workload.command: is required")
	}
	if len(w.Command) > 64 {
		return fmt.Errorf("workload.command: %d entries; the limit is 64", len(w.Command))
	}
	if p := w.Command[0]; !strings.HasPrefix(p, "/") || path.Clean(p) != p {
		return fmt.Errorf("workload.command[0]: %q must be an absolute, clean path to a program in the image", p)
	}
	for i, a := range w.Command {
		if len(a) > 4096 || strings.ContainsRune(a, 0) {
			return fmt.Errorf("workload.command[%d]: longer than 4096 bytes or contains NUL", i)
		}
	}
	if w.UID < 1 || w.UID > 65534 {
		return fmt.Errorf("workload.uid: %d; the workload runs as an unprivileged user (1 to 65534)", w.UID)
	}
	if w.GID < 1 || w.GID > 65534 {
		return fmt.Errorf("workload.gid: %d; use a group other than root (1 to 65534)", w.GID)
	}
	return nil
}

func checkHostname(h string) error {
	if h == "" {
		return fmt.Errorf("is required")
	}
	if len(h) > 253 {
		return fmt.Errorf("%q is longer than 253 characters", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q: each dot-separated label must be 1 to 63 characters", h)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q: a label may not start or end with '-'", h)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("%q: only letters, digits, '-' and '.' are allowed", h)
			}
		}
	}
	return nil
}

func (n *Network) validate() error {
	if len(n.Interfaces) > maxInterfaces {
		return fmt.Errorf("network.interfaces: %d entries; the limit is %d", len(n.Interfaces), maxInterfaces)
	}
	names := map[string]bool{}
	seenAddr := map[netip.Addr]string{}
	for i, ifc := range n.Interfaces {
		path := fmt.Sprintf("network.interfaces[%d]", i)
		if err := checkIfName(ifc.Name); err != nil {
			return fmt.Errorf("%s.name: %w", path, err)
		}
		if names[ifc.Name] {
			return fmt.Errorf("%s.name: interface %q is configured twice", path, ifc.Name)
		}
		names[ifc.Name] = true
		if len(ifc.Addresses) > maxAddresses {
			return fmt.Errorf("%s.addresses: %d entries; the limit is %d", path, len(ifc.Addresses), maxAddresses)
		}
		hasV6 := false
		for j, a := range ifc.Addresses {
			apath := fmt.Sprintf("%s.addresses[%d]", path, j)
			p, err := ParseHostPrefix(a)
			if err != nil {
				return fmt.Errorf("%s: %w", apath, err)
			}
			if other, dup := seenAddr[p.Addr()]; dup {
				return fmt.Errorf("%s: address %s is already used by %s", apath, p.Addr(), other)
			}
			seenAddr[p.Addr()] = apath
			if p.Addr().Is4() && ifc.DHCP4 {
				return fmt.Errorf("%s: a static IPv4 address and dhcp4 on the same interface conflict; choose one", apath)
			}
			hasV6 = hasV6 || p.Addr().Is6()
		}
		if ifc.MTU != 0 {
			lo := minMTU
			if hasV6 {
				lo = minMTUv6
			}
			if ifc.MTU < lo || ifc.MTU > maxMTU {
				return fmt.Errorf("%s.mtu: %d is out of range (%d to %d, or leave it out for the driver's default)", path, ifc.MTU, lo, maxMTU)
			}
		}
	}
	if len(n.Routes) > maxRoutes {
		return fmt.Errorf("network.routes: %d entries; the limit is %d", len(n.Routes), maxRoutes)
	}
	for i, r := range n.Routes {
		path := fmt.Sprintf("network.routes[%d]", i)
		to, err := ParseNetworkPrefix(r.To)
		if err != nil {
			return fmt.Errorf("%s.to: %w", path, err)
		}
		if r.Via != "" {
			via, err := netip.ParseAddr(r.Via)
			if err != nil {
				return fmt.Errorf("%s.via: %q is not an IP address", path, r.Via)
			}
			if via.Is4() != to.Addr().Is4() {
				return fmt.Errorf("%s.via: gateway %s is not of the same address family as %s", path, via, to)
			}
		} else if r.Interface == "" {
			return fmt.Errorf("%s: an on-link route (no via) must name its interface", path)
		}
		if r.Interface != "" && !names[r.Interface] {
			return fmt.Errorf("%s.interface: %q is not one of network.interfaces", path, r.Interface)
		}
	}
	return nil
}

func checkIfName(name string) error {
	if name == "" {
		return fmt.Errorf("is required")
	}
	if len(name) > 15 {
		return fmt.Errorf("%q is longer than the kernel's 15-character limit", name)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("%q is not a valid interface name", name)
	}
	return nil
}

// ParseHostPrefix parses an interface address with its prefix length, such as
// "10.0.0.2/24". The address must be a usable unicast host address.
func ParseHostPrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address with a prefix length (like 10.0.0.2/24 or fd00::2/64)", s)
	}
	a := p.Addr()
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed", s)
	}
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return netip.Prefix{}, fmt.Errorf("%q is not a unicast host address", s)
	}
	// In IPv4 subnets larger than /31 the all-zero host part names the network.
	if a.Is4() && p.Bits() < 31 && p.Masked().Addr() == a {
		return netip.Prefix{}, fmt.Errorf("%q names the network %s, not a host in it", s, p.Masked())
	}
	return p, nil
}

// ParseNetworkPrefix parses a network prefix such as "192.168.1.0/24". Host
// bits must be clear; the error says which prefix was probably meant.
func ParseNetworkPrefix(s string) (netip.Prefix, error) { return cidr.ParseNetwork(s) }

func validateVolumes(vs []Volume) error {
	if len(vs) > maxVolumes {
		return fmt.Errorf("volumes: %d entries; the limit is %d", len(vs), maxVolumes)
	}
	names, disks, mounts := map[string]int{}, map[string]int{}, map[string]int{}
	for i, v := range vs {
		at := fmt.Sprintf("volumes[%d]", i)
		if err := checkVolumeName(v.Name); err != nil {
			return fmt.Errorf("%s.name: %w", at, err)
		}
		if j, dup := names[v.Name]; dup {
			return fmt.Errorf("%s.name: %q is also the name of volumes[%d]", at, v.Name, j)
		}
		names[v.Name] = i
		var disk string
		switch {
		case v.Serial == "" && v.ByID == "":
			return fmt.Errorf("%s: give the disk's serial or by_id", at)
		case v.Serial != "" && v.ByID != "":
			return fmt.Errorf("%s: give serial or by_id, not both", at)
		case v.Serial != "":
			if err := checkDiskID(v.Serial); err != nil {
				return fmt.Errorf("%s.serial: %w", at, err)
			}
			disk = "serial " + v.Serial
		default:
			if err := checkDiskID(v.ByID); err != nil {
				return fmt.Errorf("%s.by_id: %w", at, err)
			}
			disk = "by_id " + v.ByID
		}
		if j, dup := disks[disk]; dup {
			return fmt.Errorf("%s: %s is also the disk of volumes[%d]", at, disk, j)
		}
		disks[disk] = i
		if err := checkMountPoint(v.Mount); err != nil {
			return fmt.Errorf("%s.mount: %w", at, err)
		}
		for m, j := range mounts {
			if m == v.Mount || strings.HasPrefix(v.Mount, m+"/") || strings.HasPrefix(m, v.Mount+"/") {
				return fmt.Errorf("%s.mount: %q overlaps %q of volumes[%d]", at, v.Mount, m, j)
			}
		}
		mounts[v.Mount] = i
	}
	return nil
}

func checkVolumeName(n string) error {
	if n == "" || len(n) > 32 {
		return fmt.Errorf("%q: 1 to 32 characters", n)
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("%q: only lowercase letters, digits and '-' are allowed", n)
		}
	}
	return nil
}

func checkDiskID(s string) error {
	if len(s) > 128 {
		return fmt.Errorf("%q is longer than 128 characters", s)
	}
	for _, r := range s {
		if r <= ' ' || r > '~' || r == '/' {
			return fmt.Errorf("%q: only printable ASCII without spaces or '/' is allowed", s)
		}
	}
	return nil
}

// reservedMounts are the init's own file systems.
var reservedMounts = []string{"/proc", "/sys", "/dev", "/run", "/etc", "/usr", "/lib", "/bin", "/sbin", "/init"}

func checkMountPoint(p string) error {
	if p == "" {
		return fmt.Errorf("is required")
	}
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p {
		return fmt.Errorf("%q must be an absolute, clean path (such as /var/lib/postgresql)", p)
	}
	if p == "/" {
		return fmt.Errorf("%q: the root is the initramfs; mount the volume below it", p)
	}
	for _, r := range reservedMounts {
		if p == r || strings.HasPrefix(p, r+"/") {
			return fmt.Errorf("%q is inside %s, which the init uses", p, r)
		}
	}
	if len(p) > 256 {
		return fmt.Errorf("%q is longer than 256 characters", p)
	}
	return nil
}

// EffectiveClientPorts are the client ports with the default applied.
func (f *Firewall) EffectiveClientPorts() []int {
	if f == nil || len(f.ClientPorts) == 0 {
		return []int{DefaultClientPort}
	}
	return f.ClientPorts
}

// EffectiveKeyingPort is the keying port with the default applied.
func (f *Firewall) EffectiveKeyingPort() int {
	if f == nil || f.KeyingPort == 0 {
		return DefaultKeyingPort
	}
	return f.KeyingPort
}

// EffectiveManagementPort is the management port with the default applied.
func (f *Firewall) EffectiveManagementPort() int {
	if f == nil || f.ManagementPort == 0 {
		return DefaultManagementPort
	}
	return f.ManagementPort
}

// EffectiveClients is the client allowlist with the default (anyone)
// applied.
func (f *Firewall) EffectiveClients() []string {
	if f == nil || f.Clients == nil {
		return []string{"0.0.0.0/0", "::/0"}
	}
	return *f.Clients
}

// MetadataEgress is the metadata opening, or nil when the metadata
// service is closed (the default).
func (f *Firewall) MetadataEgress() *Metadata {
	if f == nil {
		return nil
	}
	return f.Egress.Metadata
}
