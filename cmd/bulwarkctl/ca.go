package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwarkvm/bulwark/internal/pki"
)

func caCmd() *cobra.Command {
	c := group("ca", "The project CA: create it, issue node and client certificates, show and verify",
		caInitCmd(), group("issue", "Issue a node (server) or client certificate signed by the project CA", caIssueCmd("node"), caIssueCmd("client")),
		caShowCmd(), caVerifyCmd())
	c.Long = `The project CA signs every node's server certificate and every operator's
and control plane's client certificate. Its key stays in its directory,
owner-only; give customers its certificate (ca show).`
	return c
}

// certInfo is a certificate in --json output.
type certInfo struct {
	Subject   string   `json:"subject"`
	Issuer    string   `json:"issuer"`
	Serial    string   `json:"serial"`
	NotBefore string   `json:"not_before"`
	NotAfter  string   `json:"not_after"`
	IsCA      bool     `json:"is_ca,omitempty"`
	Role      string   `json:"role,omitempty"`
	DNSNames  []string `json:"dns_names,omitempty"`
	IPs       []string `json:"ip_addresses,omitempty"`
	SHA256    string   `json:"sha256"`
}

func infoOf(c *x509.Certificate) certInfo {
	sum := sha256.Sum256(c.Raw)
	i := certInfo{Subject: c.Subject.String(), Issuer: c.Issuer.String(), Serial: pki.SerialHex(c),
		NotBefore: c.NotBefore.UTC().Format(time.RFC3339), NotAfter: c.NotAfter.UTC().Format(time.RFC3339),
		IsCA: c.IsCA, Role: pki.Role(c), DNSNames: c.DNSNames, SHA256: hex.EncodeToString(sum[:])}
	for _, ip := range c.IPAddresses {
		i.IPs = append(i.IPs, ip.String())
	}
	return i
}

func caInitCmd() *cobra.Command {
	var dir, project, keyType string
	var asJSON bool
	c := &cobra.Command{
		Use:   "init --dir DIR --project NAME",
		Short: "Create the project CA in a new directory",
		Long: `Creates the project CA: a self-signed CA certificate (ca.pem) and its key
(ca.key, owner-only) in DIR. An existing CA is never overwritten.`,
		Example: `  bulwarkctl ca init --dir ./acme-ca --project acme
  bulwarkctl ca init --dir ./acme-ca --project acme --key-type rsa-3072`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" || project == "" {
				return usageError{"ca init: --dir and --project are required"}
			}
			ca, err := pki.Init(dir, project, keyType)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), map[string]any{"dir": dir, "key_file": filepath.Join(dir, pki.CAKeyFile), "certificate_file": filepath.Join(dir, pki.CACertFile), "certificate": infoOf(ca.Cert)})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created the project CA in %s (key %s, owner-only)\n%s", dir, pki.CAKeyFile, pki.Describe(ca.Cert))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&dir, "dir", "", "the new CA's directory `DIR` (required)")
	f.StringVar(&project, "project", "", "the project `NAME`, the CA's organisation (required)")
	f.StringVar(&keyType, "key-type", pki.ECDSAP256, "the CA key: ecdsa-p256 or rsa-3072")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return c
}

func caIssueCmd(kind string) *cobra.Command {
	var dir, name, out, keyType, dns, ips, role, tlsJSON string
	var validity time.Duration
	var asJSON bool
	c := &cobra.Command{
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return caIssue(cmd.OutOrStdout(), kind, dir, name, out, keyType, dns, ips, role, tlsJSON, validity, asJSON)
		},
	}
	f := c.Flags()
	f.StringVar(&dir, "dir", "", "the project CA's directory `DIR` (required)")
	f.StringVar(&out, "out", "", "write `PREFIX`.pem and PREFIX.key (owner-only) (required)")
	f.StringVar(&keyType, "key-type", pki.ECDSAP256, "the certificate's key: ecdsa-p256 or rsa-3072")
	f.DurationVar(&validity, "validity", 0, "how long the certificate is valid (default: the CA's default for its kind)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	if kind == "node" {
		c.Use = "node --dir DIR --name NAME --out PREFIX"
		c.Short = "Issue a node's TLS server certificate"
		c.Long = `Issues a node's server certificate and key, for the node's front door, its
management API and IPsec keying. --tls-json writes the config's tls
section (CA, certificate and key) ready to paste.`
		c.Example = `  bulwarkctl ca issue node --dir ./acme-ca --name db-1 --ip 10.0.0.5 --out db-1 --tls-json db-1-tls.json
  bulwarkctl ca issue node --dir ./acme-ca --name db-2 --dns db-2.acme.example --ip 10.0.0.6,fd00::6 --out db-2`
		f.StringVar(&name, "name", "", "the node's `NAME` (its common name) (required)")
		f.StringVar(&dns, "dns", "", "DNS names the certificate is for, comma-separated")
		f.StringVar(&ips, "ip", "", "IP addresses the certificate is for, comma-separated")
		f.StringVar(&tlsJSON, "tls-json", "", "also write the config's tls section to this `FILE` (owner-only)")
	} else {
		c.Use = "client --dir DIR --name NAME --role operator|control-plane --out PREFIX"
		c.Short = "Issue an operator's or the control plane's client certificate"
		c.Long = `Issues a client certificate for the management API. Its role decides what
it may do: operator reads (status, audit log, attestation), control-plane
also changes (allowlist, backup, rekey, shutdown).`
		c.Example = `  bulwarkctl ca issue client --dir ./acme-ca --name robot --role control-plane --out robot
  bulwarkctl ca issue client --dir ./acme-ca --name alice --role operator --out alice`
		f.StringVar(&name, "name", "", "the client's `NAME` (its common name) (required)")
		f.StringVar(&role, "role", "", "operator or control-plane (required)")
	}
	return c
}

func caIssue(stdout io.Writer, kind, dir, name, out, keyType, dns, ips, role, tlsJSON string, validity time.Duration, asJSON bool) error {
	if dir == "" || name == "" || out == "" {
		return usageError{"ca issue: --dir, --name and --out are required"}
	}
	ca, err := pki.Load(dir)
	if err != nil {
		return err
	}
	var issued *pki.Issued
	if kind == "node" {
		var ipList []net.IP
		for _, s := range split(ips) {
			ip := net.ParseIP(s)
			if ip == nil {
				return fmt.Errorf("--ip: %q is not an IP address", s)
			}
			ipList = append(ipList, ip)
		}
		issued, err = ca.IssueNode(pki.NodeRequest{Name: name, DNSNames: split(dns), IPs: ipList, KeyType: keyType, Validity: validity})
	} else {
		issued, err = ca.IssueClient(name, role, keyType, validity)
	}
	if err != nil {
		return err
	}
	if err := os.WriteFile(out+".key", issued.KeyPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(out+".pem", issued.CertPEM, 0o644); err != nil {
		return err
	}
	if tlsJSON != "" {
		b, _ := json.MarshalIndent(map[string]string{"ca": string(ca.PEM), "certificate": string(issued.CertPEM), "key": string(issued.KeyPEM)}, "", "  ")
		if err := os.WriteFile(tlsJSON, append(b, '\n'), 0o600); err != nil {
			return err
		}
	}
	if asJSON {
		res := map[string]any{"certificate_file": out + ".pem", "key_file": out + ".key", "certificate": infoOf(issued.Cert)}
		if tlsJSON != "" {
			res["tls_json_file"] = tlsJSON
		}
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "wrote %s.pem and %s.key (owner-only)\n%s", out, out, pki.Describe(issued.Cert))
	return nil
}

func caShowCmd() *cobra.Command {
	var dir string
	var text, asJSON bool
	c := &cobra.Command{
		Use:   "show --dir DIR",
		Short: "Print the CA certificate (PEM) for clients to trust",
		Long: `Prints the project CA's certificate as PEM: what customers' clients trust
(sslrootcert=) and what bulwarkctl's --ca takes. --text describes it first.`,
		Example: `  bulwarkctl ca show --dir ./acme-ca > acme-ca.pem
  bulwarkctl ca show --dir ./acme-ca --text`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return usageError{"ca show: --dir is required"}
			}
			pemData, err := os.ReadFile(filepath.Join(dir, pki.CACertFile))
			if err != nil {
				return err
			}
			c, err := pki.ParseCertificate(pemData)
			if err != nil {
				return err
			}
			stdout := cmd.OutOrStdout()
			if asJSON {
				return printJSON(stdout, map[string]any{"pem": string(pemData), "certificate": infoOf(c)})
			}
			if text {
				fmt.Fprint(stdout, pki.Describe(c))
			}
			stdout.Write(pemData)
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "the project CA's directory `DIR` (required)")
	c.Flags().BoolVar(&text, "text", false, "describe the certificate before the PEM")
	c.Flags().BoolVar(&asJSON, "json", false, "print the PEM and a description as JSON")
	return c
}

func caVerifyCmd() *cobra.Command {
	var dir, use, revoked string
	var asJSON bool
	c := &cobra.Command{
		Use:   "verify --dir DIR CERT",
		Short: "Check that a certificate is valid for server or client use under the project CA",
		Long: `Checks a certificate (PEM file) against the project CA: signed by it, within
its validity, for the use asked (server or client), its serial not among
--revoked. Exit 1 if not, saying why.`,
		Example: `  bulwarkctl ca verify --dir ./acme-ca db-1.pem
  bulwarkctl ca verify --dir ./acme-ca --use client --revoked 3f2a,91bc robot.pem`,
		Args: exactArgs(1, "give one certificate file"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return usageError{"ca verify: --dir is required"}
			}
			usage := x509.ExtKeyUsageServerAuth
			switch use {
			case "server":
			case "client":
				usage = x509.ExtKeyUsageClientAuth
			default:
				return usageError{"ca verify: --use server or client"}
			}
			caPEM, err := os.ReadFile(filepath.Join(dir, pki.CACertFile))
			if err != nil {
				return err
			}
			ca, err := pki.ParseCertificate(caPEM)
			if err != nil {
				return err
			}
			certPEM, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			c, err := pki.ParseCertificate(certPEM)
			if err != nil {
				return err
			}
			verr := pki.Verify(ca, c, usage, split(revoked), time.Now())
			stdout := cmd.OutOrStdout()
			if asJSON {
				res := map[string]any{"file": args[0], "use": use, "valid": verr == nil, "certificate": infoOf(c), "ca": ca.Subject.CommonName}
				if verr != nil {
					res["error"] = verr.Error()
				}
				if err := printJSON(stdout, res); err != nil {
					return err
				}
			} else {
				fmt.Fprint(stdout, pki.Describe(c))
			}
			if verr != nil {
				return fmt.Errorf("%s: not valid for %s use: %w", args[0], use, verr)
			}
			if !asJSON {
				fmt.Fprintf(stdout, "valid for %s use, signed by %s\n", use, ca.Subject.CommonName)
			}
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "the project CA's directory `DIR` (required)")
	c.Flags().StringVar(&use, "use", "server", "the use to check: server or client")
	c.Flags().StringVar(&revoked, "revoked", "", "revoked serial numbers (hex), comma-separated")
	c.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return c
}
