package main

import (
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/bulwarkvm/bulwark/internal/pki"
)

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parse parses flags wherever they are among the arguments (the flag
// package stops at the first argument that is not a flag), leaving the
// others, in order, as fs.Args().
func parse(fs *flag.FlagSet, args []string) error {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return usageError{fs.Name() + ": " + err.Error()}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if rest[0] == "--" {
			positional = append(positional, rest[1:]...)
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	fs.Parse(append([]string{"--"}, positional...))
	return nil
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func caCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"ca: use init, issue, show or verify"}
	}
	switch args[0] {
	case "init":
		fs := newFlags("ca init")
		dir := fs.String("dir", "", "")
		project := fs.String("project", "", "")
		keyType := fs.String("key-type", pki.ECDSAP256, "")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if *dir == "" || *project == "" {
			return usageError{"ca init: --dir and --project are required"}
		}
		ca, err := pki.Init(*dir, *project, *keyType)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "created the project CA in %s (key %s, owner-only)\n%s", *dir, pki.CAKeyFile, pki.Describe(ca.Cert))
		return nil
	case "issue":
		if len(args) < 2 || (args[1] != "node" && args[1] != "client") {
			return usageError{"ca issue: use node or client"}
		}
		return caIssue(args[1], args[2:], stdout)
	case "show":
		fs := newFlags("ca show")
		dir := fs.String("dir", "", "")
		text := fs.Bool("text", false, "")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		pemData, err := os.ReadFile(*dir + "/" + pki.CACertFile)
		if err != nil {
			return err
		}
		c, err := pki.ParseCertificate(pemData)
		if err != nil {
			return err
		}
		if *text {
			fmt.Fprint(stdout, pki.Describe(c))
		}
		stdout.Write(pemData)
		return nil
	case "verify":
		fs := newFlags("ca verify")
		dir := fs.String("dir", "", "")
		use := fs.String("use", "server", "")
		revoked := fs.String("revoked", "", "")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usageError{"ca verify: give one certificate file"}
		}
		caPEM, err := os.ReadFile(*dir + "/" + pki.CACertFile)
		if err != nil {
			return err
		}
		ca, err := pki.ParseCertificate(caPEM)
		if err != nil {
			return err
		}
		certPEM, err := os.ReadFile(fs.Arg(0))
		if err != nil {
			return err
		}
		c, err := pki.ParseCertificate(certPEM)
		if err != nil {
			return err
		}
		usage := x509.ExtKeyUsageServerAuth
		switch *use {
		case "server":
		case "client":
			usage = x509.ExtKeyUsageClientAuth
		default:
			return usageError{"ca verify: --use server or client"}
		}
		fmt.Fprint(stdout, pki.Describe(c))
		if err := pki.Verify(ca, c, usage, split(*revoked), time.Now()); err != nil {
			return fmt.Errorf("%s: not valid for %s use: %w", fs.Arg(0), *use, err)
		}
		fmt.Fprintf(stdout, "valid for %s use, signed by %s\n", *use, ca.Subject.CommonName)
		return nil
	}
	return usageError{fmt.Sprintf("ca: unknown subcommand %q", args[0])}
}

func caIssue(kind string, args []string, stdout io.Writer) error {
	fs := newFlags("ca issue " + kind)
	dir := fs.String("dir", "", "")
	name := fs.String("name", "", "")
	out := fs.String("out", "", "")
	keyType := fs.String("key-type", pki.ECDSAP256, "")
	validity := fs.Duration("validity", 0, "")
	dns := fs.String("dns", "", "")
	ips := fs.String("ip", "", "")
	role := fs.String("role", "", "")
	tlsJSON := fs.String("tls-json", "", "")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || *name == "" || *out == "" {
		return usageError{"ca issue: --dir, --name and --out are required"}
	}
	ca, err := pki.Load(*dir)
	if err != nil {
		return err
	}
	var issued *pki.Issued
	if kind == "node" {
		var ipList []net.IP
		for _, s := range split(*ips) {
			ip := net.ParseIP(s)
			if ip == nil {
				return fmt.Errorf("--ip: %q is not an IP address", s)
			}
			ipList = append(ipList, ip)
		}
		issued, err = ca.IssueNode(pki.NodeRequest{Name: *name, DNSNames: split(*dns), IPs: ipList, KeyType: *keyType, Validity: *validity})
	} else {
		issued, err = ca.IssueClient(*name, *role, *keyType, *validity)
	}
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out+".key", issued.KeyPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(*out+".pem", issued.CertPEM, 0o644); err != nil {
		return err
	}
	if *tlsJSON != "" {
		if kind != "node" {
			return usageError{"--tls-json is for node certificates"}
		}
		b, _ := json.MarshalIndent(map[string]string{"ca": string(ca.PEM), "certificate": string(issued.CertPEM), "key": string(issued.KeyPEM)}, "", "  ")
		if err := os.WriteFile(*tlsJSON, append(b, '\n'), 0o600); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote %s.pem and %s.key (owner-only)\n%s", *out, *out, pki.Describe(issued.Cert))
	return nil
}
