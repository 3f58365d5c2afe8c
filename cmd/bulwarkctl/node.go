package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwarkvm/bulwark/internal/audit"
	"github.com/bulwarkvm/bulwark/internal/pki"
)

// nodeFlags are the connection flags every node command takes; each
// falls back to an environment variable when not given.
type nodeFlags struct {
	node, cert, key, ca string
	json                bool
}

func addNodeFlags(c *cobra.Command, jsonHelp string) *nodeFlags {
	nf := &nodeFlags{}
	f := c.Flags()
	f.StringVar(&nf.node, "node", "", "the node's management API, `HOST:PORT` (default $BULWARK_NODE)")
	f.StringVar(&nf.cert, "cert", "", "your client certificate, a PEM `FILE` issued by the project CA (default $BULWARK_CERT)")
	f.StringVar(&nf.key, "key", "", "the certificate's private key, a PEM `FILE` (default $BULWARK_KEY)")
	f.StringVar(&nf.ca, "ca", "", "the project CA certificate, a PEM `FILE`: the node's certificate must be signed by it (default $BULWARK_CA)")
	f.BoolVar(&nf.json, "json", false, jsonHelp)
	c.Long = withEnv(c.Long, nodeEnv...)
	return nf
}

type client struct {
	base     string
	http     *http.Client
	certFile string
	caFile   string
	host     string
}

func orEnv(v, env string) string {
	if v != "" {
		return v
	}
	return os.Getenv(env)
}

// client checks the connection settings and makes the client. Nothing is
// sent yet.
func (f *nodeFlags) client() (*client, error) {
	node, cert, key, ca := orEnv(f.node, "BULWARK_NODE"), orEnv(f.cert, "BULWARK_CERT"), orEnv(f.key, "BULWARK_KEY"), orEnv(f.ca, "BULWARK_CA")
	var missing []string
	for _, m := range []struct{ v, flag, env string }{
		{node, "--node HOST:PORT", "BULWARK_NODE"}, {cert, "--cert FILE", "BULWARK_CERT"},
		{key, "--key FILE", "BULWARK_KEY"}, {ca, "--ca FILE", "BULWARK_CA"},
	} {
		if m.v == "" {
			missing = append(missing, m.flag+" (or set "+m.env+")")
		}
	}
	if len(missing) > 0 {
		return nil, usagef("which node, and as whom? missing %s", andList(missing))
	}
	host, _, err := net.SplitHostPort(node)
	if err != nil {
		return nil, usagef("--node %q: want HOST:PORT, the node's management address and port, e.g. 10.0.0.5:9443", node)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("your certificate (--cert %s, --key %s): %w", cert, key, err)
	}
	caPEM, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("the project CA (--ca): %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no certificate; --ca takes the project CA's certificate (bulwarkctl ca show --dir DIR)", ca)
	}
	cfg := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: host, MinVersion: tls.VersionTLS13}
	return &client{base: "https://" + node, certFile: cert, caFile: ca, host: host,
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}}, nil
}

func andList(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

// call makes one request; a non-2xx answer becomes an error with the
// node's message.
func (c *client) call(method, path string, body any) ([]byte, http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, path, c.explain(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(b, &e)
		if e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return nil, nil, fmt.Errorf("the node refused %s %s (%d): %s", method, path, resp.StatusCode, e.Error)
	}
	return b, resp.Header, nil
}

// explain says which certificate a failed TLS connection refused and why,
// and what to check next. The error text keeps the original cause.
func (c *client) explain(err error) error {
	var verr *tls.CertificateVerificationError
	var herr x509.HostnameError
	var op *net.OpError
	switch {
	case errors.As(err, &herr):
		return fmt.Errorf("%w\n  the node's certificate is not for %s: give --node the address or name its certificate was issued for (bulwarkctl ca issue node --ip/--dns)", err, c.host)
	case errors.As(err, &verr):
		return fmt.Errorf("%w\n  the node's certificate was refused: it does not chain to the CA in %s (--ca / BULWARK_CA); is that this project's CA (bulwarkctl ca show)?", err, c.caFile)
	case errors.As(err, &op) && op.Op == "remote error":
		// A TLS alert from the node: in TLS 1.3 the node checks the
		// client's certificate after the client's side of the handshake,
		// so its refusal arrives as an alert on the first read.
		return fmt.Errorf("%w\n  the node refused your client certificate %s: %s", err, c.certFile, c.diagnose())
	}
	return err
}

// diagnose checks the client certificate as the node does (signed by the
// project CA, within its validity, for client use, with a management
// role) and says what is wrong, or that it looks right from here.
func (c *client) diagnose() string {
	certPEM, err1 := os.ReadFile(c.certFile)
	caPEM, err2 := os.ReadFile(c.caFile)
	if err1 != nil || err2 != nil {
		return "it could not be read again to say why"
	}
	cert, err1 := pki.ParseCertificate(certPEM)
	ca, err2 := pki.ParseCertificate(caPEM)
	if err1 != nil || err2 != nil {
		return "it could not be parsed to say why"
	}
	who := fmt.Sprintf("%s, serial %s", cert.Subject, pki.SerialHex(cert))
	if err := pki.Verify(ca, cert, x509.ExtKeyUsageClientAuth, nil, time.Now()); err != nil {
		return fmt.Sprintf("%s: %v (check it with: bulwarkctl ca verify --dir CA_DIR --use client %s)", who, err, c.certFile)
	}
	if r := pki.Role(cert); r != pki.RoleOperator && r != pki.RoleControlPlane {
		return who + ": it carries no management role; issue one with bulwarkctl ca issue client --role operator|control-plane"
	}
	return who + ": it is valid for client use under " + c.caFile + " here, so the node has revoked it (its config's tls.revoked) or trusts another project CA"
}

func statusCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "status",
		Short: "Show a running node's boot stages, firewall, volumes, front doors, IPsec, TPM, backups and audit head",
		Long:  `Asks a running node for its state over the management API (any role).`,
		Example: `  bulwarkctl status --node 10.0.0.5:9443 --ca acme-ca.pem --cert robot.pem --key robot.key
  BULWARK_NODE=10.0.0.5:9443 bulwarkctl status --json`,
		Args: noArgs,
	}
	nf := addNodeFlags(c, "print the node's answer as JSON")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := nf.client()
		if err != nil {
			return err
		}
		b, _, err := cl.call("GET", "/v1/status", nil)
		if err != nil {
			return err
		}
		if nf.json {
			cmd.OutOrStdout().Write(b)
			return nil
		}
		return printStatus(cmd.OutOrStdout(), b)
	}
	return c
}

func printStatus(stdout io.Writer, b []byte) error {
	var st struct {
		Hostname string `json:"hostname"`
		Config   string `json:"config_sha256"`
		Uptime   string `json:"uptime"`
		Stages   []struct {
			Name, Result, Detail string
			Ms                   float64
		} `json:"stages"`
		Firewall   []string `json:"firewall"`
		Volumes    []string `json:"volumes"`
		FrontDoors []struct {
			Port                               int
			Protocol                           string
			Active, Served, Refused, Plaintext int64
		} `json:"front_doors"`
		Services []struct {
			Name, State, UID, Seccomp, Landlock string
			Pid, Restarts                       int
			CapEff                              string `json:"cap_eff"`
			NoNewPrivs                          string `json:"no_new_privs"`
			LastExit                            string `json:"last_exit"`
		} `json:"services"`
		IPsec      json.RawMessage `json:"ipsec"`
		Backups    string          `json:"backups"`
		TPM        string          `json:"tpm"`
		AuditHead  string          `json:"audit_head"`
		AuditCount uint64          `json:"audit_records"`
		AuditFile  string          `json:"audit_file"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	fmt.Fprintf(stdout, "node %s, up %s, config sha256 %s\n", st.Hostname, st.Uptime, st.Config)
	for _, s := range st.Stages {
		fmt.Fprintf(stdout, "  %-13s %-6s %9.1fms  %s\n", s.Name, s.Result, s.Ms, s.Detail)
	}
	for _, l := range st.Firewall {
		fmt.Fprintf(stdout, "firewall: %s\n", l)
	}
	for _, v := range st.Volumes {
		fmt.Fprintf(stdout, "volume %s\n", v)
	}
	for _, d := range st.FrontDoors {
		fmt.Fprintf(stdout, "front door %d (%s): %d active, %d served, %d refused, %d plaintext attempts\n", d.Port, d.Protocol, d.Active, d.Served, d.Refused, d.Plaintext)
	}
	for _, v := range st.Services {
		caps := "no capabilities"
		if strings.Trim(v.CapEff, "0") != "" {
			caps = "capabilities " + v.CapEff
		}
		line := fmt.Sprintf("service %s: %s, pid %d, uid %s, %s, no_new_privs %s, seccomp %s, landlock %s, %d restarts",
			v.Name, v.State, v.Pid, v.UID, caps, v.NoNewPrivs, v.Seccomp, v.Landlock, v.Restarts)
		if v.LastExit != "" {
			line += ", last " + v.LastExit
		}
		fmt.Fprintln(stdout, line)
	}
	var peers []struct {
		Name, Address, State string
		SAAge                string `json:"sa_age"`
		Generation           uint64
		Rekeys               int
		BytesOut             uint64 `json:"bytes_out"`
		BytesIn              uint64 `json:"bytes_in"`
	}
	var note string
	if json.Unmarshal(st.IPsec, &peers) == nil {
		for _, p := range peers {
			fmt.Fprintf(stdout, "ipsec peer %s %s: %s, generation %d, SA age %s, %d rekeys, %d bytes out, %d in\n",
				p.Name, p.Address, p.State, p.Generation, p.SAAge, p.Rekeys, p.BytesOut, p.BytesIn)
		}
	} else if json.Unmarshal(st.IPsec, &note) == nil {
		fmt.Fprintf(stdout, "ipsec: %s\n", note)
	}
	fmt.Fprintf(stdout, "tpm: %s\nbackups: %s\naudit: %d records, head %s, %s\n", st.TPM, st.Backups, st.AuditCount, st.AuditHead, st.AuditFile)
	return nil
}

func allowlistCmd() *cobra.Command {
	get := &cobra.Command{
		Use:     "get",
		Short:   "Print the node's client allowlist",
		Long:    `Prints the CIDR ranges the node's client ports accept connections from (any role).`,
		Example: `  bulwarkctl allowlist get --node 10.0.0.5:9443 --ca acme-ca.pem --cert alice.pem --key alice.key`,
		Args:    noArgs,
	}
	set := &cobra.Command{
		Use:   "set CIDR...",
		Short: "Replace the node's client allowlist (atomic, connections kept)",
		Long: `Replaces the client allowlist with the CIDR ranges given (control-plane
role). The firewall swaps its rules in one transaction; established
connections of clients still allowed are kept. No ranges: no client can
connect.`,
		Example: `  bulwarkctl allowlist set 203.0.113.0/24 2001:db8::/32
  bulwarkctl allowlist set 10.0.0.0/8 --json`,
		Args: cobra.ArbitraryArgs,
	}
	for _, c := range []*cobra.Command{get, set} {
		nf := addNodeFlags(c, "print the node's answer as JSON")
		c.RunE = func(cmd *cobra.Command, args []string) error {
			cl, err := nf.client()
			if err != nil {
				return err
			}
			var b []byte
			if cmd == get {
				b, _, err = cl.call("GET", "/v1/allowlist", nil)
			} else {
				entries := args
				if entries == nil {
					entries = []string{}
				}
				b, _, err = cl.call("PUT", "/v1/allowlist", map[string][]string{"clients": entries})
			}
			if err != nil {
				return err
			}
			stdout := cmd.OutOrStdout()
			if nf.json {
				stdout.Write(b)
				return nil
			}
			var res struct {
				Clients []string `json:"clients"`
				Warning string   `json:"warning"`
			}
			json.Unmarshal(b, &res)
			if res.Warning != "" {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", res.Warning)
			}
			if len(res.Clients) == 0 {
				fmt.Fprintln(stdout, "client allowlist: empty (no client can connect)")
				return nil
			}
			fmt.Fprintf(stdout, "client allowlist (%d ranges):\n", len(res.Clients))
			for _, e := range res.Clients {
				fmt.Fprintln(stdout, "  "+e)
			}
			return nil
		}
	}
	return group("allowlist", "The client allowlist of a running node", get, set)
}

func auditCmd() *cobra.Command {
	return group("audit", "A node's hash-chained audit log: fetch it, verify a copy", auditFetchCmd(), auditVerifyCmd())
}

func auditFetchCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "fetch [-o FILE]",
		Short: "Download a node's audit log and verify its chain",
		Long: `Downloads the node's audit log (any role), verifies its hash chain up to
the head the node reports, and writes it to standard output or -o FILE.
The record count and head go to standard error. A node without an audit
file keeps only its latest records: the copy then begins later, and the
command says how to verify it.`,
		Example: `  bulwarkctl audit fetch -o db-1-audit.log --node 10.0.0.5:9443 --ca acme-ca.pem --cert alice.pem --key alice.key
  bulwarkctl audit fetch --json -o db-1-audit.log`,
		Args: noArgs,
	}
	nf := addNodeFlags(c, "print the record count, head and start as JSON (to standard error when the log goes to standard output)")
	c.Flags().StringVarP(&out, "output", "o", "", "write the log to `FILE` (owner-only) instead of standard output")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := nf.client()
		if err != nil {
			return err
		}
		stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
		b, h, err := cl.call("GET", "/v1/audit", nil)
		if err != nil {
			return err
		}
		head := h.Get("X-Bulwark-Audit-Head")
		// A node without an audit file keeps only its latest records: the
		// copy then begins later than genesis, and says where.
		from := audit.FromGenesis
		if v := h.Get("X-Bulwark-Audit-Start"); v != "" && v != "1" {
			seq, err := strconv.ParseUint(v, 10, 64)
			if err != nil || seq == 0 {
				return fmt.Errorf("the node sent a bad X-Bulwark-Audit-Start %q", v)
			}
			from = audit.Anchor{Seq: seq, Prev: h.Get("X-Bulwark-Audit-Start-Prev")}
			if len(from.Prev) != 64 {
				return fmt.Errorf("the node sent a bad X-Bulwark-Audit-Start-Prev %q", from.Prev)
			}
		}
		n, _, verr := audit.VerifyFrom(bytes.NewReader(b), from, head)
		if out == "" {
			stdout.Write(b)
		} else if err := os.WriteFile(out, b, 0o600); err != nil {
			return err
		}
		if nf.json {
			w := stdout
			if out == "" {
				w = stderr
			}
			res := map[string]any{"records": n, "head": head, "start": from.Seq, "verified": verr == nil}
			if from.Seq > 1 {
				res["anchor"] = from.Prev
			}
			if out != "" {
				res["file"] = out
			}
			if err := printJSON(w, res); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(stderr, "audit log: %d records, head %s\n", n, head)
			if from.Seq > 1 {
				fmt.Fprintf(stderr, "warning: this copy begins at record %d: the node has no audit file and keeps only its latest records in memory, so records 1 to %d are gone.\n"+
					"  verify it with: bulwarkctl audit verify FILE --start %d --anchor %s\n", from.Seq, from.Seq-1, from.Seq, from.Prev)
			}
		}
		if verr != nil {
			return fmt.Errorf("the fetched log does not verify: %w", verr)
		}
		return nil
	}
	return c
}

func auditVerifyCmd() *cobra.Command {
	var head, anchor string
	var start uint64
	var asJSON bool
	c := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check an audit log's hash chain (offline)",
		Long: `Checks an audit log's hash chain: every record's link to the one before and
its own hash; with --head, that the last record's hash is that head (from
status or audit fetch). A copy that begins after record 1 (from a node
that keeps its log in memory only) verifies from --start with --anchor,
the hash of the record before it.`,
		Example: `  bulwarkctl audit verify db-1-audit.log --head 5be1…
  bulwarkctl audit verify db-1-audit.log --start 4001 --anchor 9c3e…`,
		Args: exactArgs(1, "give one log file"),
		RunE: func(cmd *cobra.Command, args []string) error {
			// --start/--anchor: a copy that begins after genesis (one fetched
			// from a node that keeps its log in memory only).
			from := audit.FromGenesis
			switch {
			case start == 0:
				return usageError{"audit verify: --start counts from 1"}
			case anchor != "" && len(anchor) != 64:
				return usageError{"audit verify: --anchor is the 64 hex digits of the hash of the record before --start"}
			case start == 1 && anchor != "" && anchor != audit.Genesis:
				return usageError{"audit verify: the record before record 1 is genesis (64 zeros); give --start with --anchor"}
			case start > 1:
				from = audit.Anchor{Seq: start, Prev: anchor}
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			n, h, err := audit.VerifyFrom(f, from, head)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			stdout := cmd.OutOrStdout()
			if asJSON {
				return printJSON(stdout, map[string]any{"file": args[0], "records": n, "start": from.Seq, "anchor_checked": from.Seq == 1 || from.Prev != "", "head": h})
			}
			switch {
			case from.Seq == 1:
				fmt.Fprintf(stdout, "%s: %d records, chain intact, head %s\n", args[0], n, h)
			case from.Prev == "":
				fmt.Fprintf(stdout, "%s: %d records from seq %d, chain intact from there (its link to record %d is not checked: no --anchor), head %s\n", args[0], n, from.Seq, from.Seq-1, h)
			default:
				fmt.Fprintf(stdout, "%s: %d records from seq %d, chain intact from the anchor, head %s\n", args[0], n, from.Seq, h)
			}
			return nil
		},
	}
	c.Flags().StringVar(&head, "head", "", "the `HASH` the last record must have")
	c.Flags().Uint64Var(&start, "start", 1, "the sequence number of the first record in the file")
	c.Flags().StringVar(&anchor, "anchor", "", "the `HASH` of the record before --start (64 hex digits)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return c
}

func shutdownCmd() *cobra.Command {
	var wipe bool
	c := &cobra.Command{
		Use:   "shutdown --wipe",
		Short: "Power a node off; its volumes are crypto-erased",
		Long: `Shuts the node down (control-plane role): the workload stops, a final backup
runs if the config asks for one, the volumes are crypto-erased, the node
powers off. --wipe is required: a node only ever shuts down this way.`,
		Example: `  bulwarkctl shutdown --wipe --node 10.0.0.5:9443 --ca acme-ca.pem --cert robot.pem --key robot.key`,
		Args:    noArgs,
	}
	nf := addNodeFlags(c, "print the node's answer as JSON")
	c.Flags().BoolVar(&wipe, "wipe", false, "say that the node's volumes are to be crypto-erased (required)")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if !wipe {
			return usageError{"shutdown: say --wipe: a node only ever shuts down by crypto-erasing its volumes"}
		}
		cl, err := nf.client()
		if err != nil {
			return err
		}
		b, _, err := cl.call("POST", "/v1/shutdown", map[string]bool{"wipe": true})
		if err != nil {
			return err
		}
		return printResult(b, nf.json, cmd.OutOrStdout())
	}
	return c
}

func ipsecCmd() *cobra.Command {
	return group("ipsec", "IPsec between nodes", postCmd("rekey", "/v1/ipsec/rekey",
		"Replace the node's IPsec keys with all its peers now (make before break)",
		`Makes the node key new SAs with every peer now (control-plane role), as it
does hourly; the old SAs stay until the new ones carry traffic.`,
		`  bulwarkctl ipsec rekey --node 10.0.0.5:9443 --ca acme-ca.pem --cert robot.pem --key robot.key`))
}

// postCmd is a node command that POSTs and prints the node's result.
func postCmd(use, path, short, long, example string) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, Long: long, Example: example, Args: noArgs}
	nf := addNodeFlags(c, "print the node's answer as JSON")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := nf.client()
		if err != nil {
			return err
		}
		b, _, err := cl.call("POST", path, struct{}{})
		if err != nil {
			return err
		}
		return printResult(b, nf.json, cmd.OutOrStdout())
	}
	return c
}

func printResult(b []byte, asJSON bool, stdout io.Writer) error {
	if asJSON {
		stdout.Write(b)
		return nil
	}
	var res struct {
		Result string `json:"result"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return errors.New("unexpected answer from the node")
	}
	fmt.Fprintln(stdout, res.Result)
	return nil
}
