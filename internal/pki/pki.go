// Package pki is the project certificate authority: one CA per project,
// kept in a directory with owner-only key files, that signs the node
// certificates (TLS servers towards clients, and both ends of node-to-node
// keying) and the management-client certificates, which carry a role.
// See docs/pki.md.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Key types.
const (
	ECDSAP256 = "ecdsa-p256"
	RSA3072   = "rsa-3072"
)

// Roles of management clients, carried in the certificate's subject as
// the organizational unit "bulwark-role:<role>".
const (
	RoleOperator     = "operator"
	RoleControlPlane = "control-plane"
	rolePrefix       = "bulwark-role:"
)

// Validity periods. Short on purpose: a certificate is renewed by issuing
// a new one (see docs/pki.md), and a stolen one expires soon.
const (
	CAValidity     = 5 * 365 * 24 * time.Hour
	NodeValidity   = 30 * 24 * time.Hour
	ClientValidity = 7 * 24 * time.Hour
	// backdate absorbs clock skew between the CA's host and the nodes.
	backdate = 5 * time.Minute
)

// File names in a CA directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca.key"
)

// CA is a loaded project CA.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	PEM  []byte
}

func newKey(keyType string) (crypto.Signer, error) {
	switch keyType {
	case "", ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	return nil, fmt.Errorf("pki: key type %q; use %s or %s", keyType, ECDSAP256, RSA3072)
}

func serial() (*big.Int, error) {
	// 128 random bits, positive.
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// Init creates a CA in dir, which must not hold one already. The directory
// is made owner-only (0700) and the key file 0600.
func Init(dir, project, keyType string) (*CA, error) {
	if project == "" {
		return nil, errors.New("pki: the project name is required")
	}
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); err == nil {
		return nil, fmt.Errorf("pki: %s already holds a CA; refusing to overwrite it", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	key, err := newKey(keyType)
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: project + " project CA", Organization: []string{project}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// Key first, exclusively: a racing Init cannot both succeed.
	if err := writeExclusive(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeExclusive(filepath.Join(dir, CACertFile), certPEM, 0o644); err != nil {
		return nil, err
	}
	return Load(dir)
}

func writeExclusive(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("pki: %w", err)
	}
	return f.Close()
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Load reads the CA in dir. It refuses a key file that others can read.
func Load(dir string) (*CA, error) {
	keyPath := filepath.Join(dir, CAKeyFile)
	st, err := os.Stat(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: no CA in %s: %w", dir, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("pki: %s is readable by others (mode %v); chmod 600 it", keyPath, st.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	if !KeyMatches(cert, key) {
		return nil, fmt.Errorf("pki: %s does not belong to %s", CAKeyFile, CACertFile)
	}
	return &CA{Cert: cert, Key: key, PEM: certPEM}, nil
}

// KeyMatches reports whether key is the private key of cert.
func KeyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := cert.PublicKey.(equaler)
	return ok && e.Equal(key.Public())
}

// ParseCertificate parses one PEM certificate.
func ParseCertificate(pemData []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(pemData)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("pki: no PEM CERTIFICATE block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return c, nil
}

// ParsePool parses one or more PEM certificates, and nothing else, into a
// pool of trust anchors.
func ParsePool(pemData []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := pemData; ; n++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, fmt.Errorf("pki: certificate %d: not PEM", n+1)
			}
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("pki: certificate %d: a PEM %s block, not a CERTIFICATE", n+1, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: certificate %d: %w", n+1, err)
		}
		pool.AddCert(c)
	}
	if n == 0 {
		return nil, errors.New("pki: no PEM CERTIFICATE block")
	}
	return pool, nil
}

// ParseKey parses a PKCS#8 PEM private key.
func ParseKey(pemData []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(pemData)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("pki: no PEM PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("pki: the key cannot sign")
	}
	return s, nil
}

// Issued is a certificate with its private key, both PEM.
type Issued struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// NodeRequest describes a node certificate.
type NodeRequest struct {
	Name     string   // the node's name; also a DNS SAN when it is a host name
	DNSNames []string // more DNS SANs
	IPs      []net.IP
	KeyType  string
	Validity time.Duration // default NodeValidity
}

// IssueNode signs a node certificate, for TLS server and client use.
func (ca *CA) IssueNode(r NodeRequest) (*Issued, error) {
	if r.Name == "" {
		return nil, errors.New("pki: the node name is required")
	}
	dns := slices.Clone(r.DNSNames)
	if net.ParseIP(r.Name) == nil && !slices.Contains(dns, r.Name) {
		dns = append([]string{r.Name}, dns...)
	}
	if len(dns) == 0 && len(r.IPs) == 0 {
		return nil, errors.New("pki: a node certificate needs at least one DNS name or IP address")
	}
	return ca.issue(pkix.Name{CommonName: r.Name}, dns, r.IPs, r.KeyType, or(r.Validity, NodeValidity),
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})
}

// IssueClient signs a management-client certificate with a role.
func (ca *CA) IssueClient(name, role, keyType string, validity time.Duration) (*Issued, error) {
	if name == "" {
		return nil, errors.New("pki: the client name is required")
	}
	if role != RoleOperator && role != RoleControlPlane {
		return nil, fmt.Errorf("pki: role %q; use %s or %s", role, RoleOperator, RoleControlPlane)
	}
	subj := pkix.Name{CommonName: name, OrganizationalUnit: []string{rolePrefix + role}}
	return ca.issue(subj, nil, nil, keyType, or(validity, ClientValidity), []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

func or(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func (ca *CA) issue(subj pkix.Name, dns []string, ips []net.IP, keyType string, validity time.Duration, eku []x509.ExtKeyUsage) (*Issued, error) {
	if validity < 0 {
		return nil, fmt.Errorf("pki: negative validity %v", validity)
	}
	key, err := newKey(keyType)
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	subj.Organization = ca.Cert.Subject.Organization
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               subj,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	if _, ok := key.(*rsa.PrivateKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &Issued{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: keyPEM}, nil
}

// Role returns the management role a client certificate carries, or "".
func Role(c *x509.Certificate) string {
	for _, ou := range c.Subject.OrganizationalUnit {
		if r, ok := strings.CutPrefix(ou, rolePrefix); ok {
			return r
		}
	}
	return ""
}

// SerialHex is how bulwark writes serial numbers (config, audit log).
func SerialHex(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

// Verify checks that cert chains to the CA for the given use, is within
// its validity at now, and is not revoked. It returns every problem found.
func Verify(caCert, cert *x509.Certificate, usage x509.ExtKeyUsage, revoked []string, now time.Time) error {
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	var problems []string
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: now}); err != nil {
		problems = append(problems, err.Error())
	}
	if slices.Contains(revoked, SerialHex(cert)) {
		problems = append(problems, "serial "+SerialHex(cert)+" is revoked")
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// Describe is a one-screen description of a certificate.
func Describe(c *x509.Certificate) string {
	var b strings.Builder
	fmt.Fprintf(&b, "subject:   %s\n", c.Subject)
	fmt.Fprintf(&b, "issuer:    %s\n", c.Issuer)
	fmt.Fprintf(&b, "serial:    %s\n", SerialHex(c))
	fmt.Fprintf(&b, "valid:     %s to %s\n", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "key:       %s\n", keyDesc(c))
	if c.IsCA {
		b.WriteString("use:       certificate authority\n")
	}
	var ekus []string
	for _, u := range c.ExtKeyUsage {
		switch u {
		case x509.ExtKeyUsageServerAuth:
			ekus = append(ekus, "TLS server")
		case x509.ExtKeyUsageClientAuth:
			ekus = append(ekus, "TLS client")
		}
	}
	if len(ekus) > 0 {
		fmt.Fprintf(&b, "use:       %s\n", strings.Join(ekus, ", "))
	}
	if r := Role(c); r != "" {
		fmt.Fprintf(&b, "role:      %s\n", r)
	}
	var sans []string
	sans = append(sans, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		sans = append(sans, ip.String())
	}
	if len(sans) > 0 {
		fmt.Fprintf(&b, "names:     %s\n", strings.Join(sans, ", "))
	}
	return b.String()
}

func keyDesc(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	}
	return fmt.Sprintf("%T", c.PublicKey)
}
