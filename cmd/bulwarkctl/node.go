package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/bulwarkvm/bulwark/internal/audit"
)

// nodeFlags are the connection flags every node command takes; each
// falls back to an environment variable.
type nodeFlags struct {
	node, cert, key, ca *string
	json                *bool
}

func addNodeFlags(fs *flag.FlagSet) nodeFlags {
	env := func(k string) string { return os.Getenv(k) }
	return nodeFlags{
		node: fs.String("node", env("BULWARK_NODE"), ""),
		cert: fs.String("cert", env("BULWARK_CERT"), ""),
		key:  fs.String("key", env("BULWARK_KEY"), ""),
		ca:   fs.String("ca", env("BULWARK_CA"), ""),
		json: fs.Bool("json", false, ""),
	}
}

// connect parses a node command's flags and arguments and makes the client.
func connect(fs *flag.FlagSet, nf nodeFlags, args []string) (*client, error) {
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	return nf.client()
}

type client struct {
	base string
	http *http.Client
}

func (f nodeFlags) client() (*client, error) {
	if *f.node == "" || *f.cert == "" || *f.key == "" || *f.ca == "" {
		return nil, usageError{"--node, --cert, --key and --ca are required (or BULWARK_NODE, BULWARK_CERT, BULWARK_KEY, BULWARK_CA)"}
	}
	host, _, err := net.SplitHostPort(*f.node)
	if err != nil {
		return nil, usageError{fmt.Sprintf("--node %q: want HOST:PORT", *f.node)}
	}
	pair, err := tls.LoadX509KeyPair(*f.cert, *f.key)
	if err != nil {
		return nil, fmt.Errorf("your certificate: %w", err)
	}
	caPEM, err := os.ReadFile(*f.ca)
	if err != nil {
		return nil, fmt.Errorf("the project CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no certificate", *f.ca)
	}
	cfg := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: host, MinVersion: tls.VersionTLS13}
	return &client{base: "https://" + *f.node, http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}}, nil
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
		return nil, nil, fmt.Errorf("%s %s: %w", method, path, err)
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

func statusCommand(args []string, stdout io.Writer) error {
	fs := newFlags("status")
	nf := addNodeFlags(fs)
	c, err := connect(fs, nf, args)
	if err != nil {
		return err
	}
	b, _, err := c.call("GET", "/v1/status", nil)
	if err != nil {
		return err
	}
	if *nf.json {
		stdout.Write(b)
		return nil
	}
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

func allowlistCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "get" && args[0] != "set") {
		return usageError{"allowlist: use get or set"}
	}
	fs := newFlags("allowlist " + args[0])
	nf := addNodeFlags(fs)
	c, err := connect(fs, nf, args[1:])
	if err != nil {
		return err
	}
	var b []byte
	if args[0] == "get" {
		b, _, err = c.call("GET", "/v1/allowlist", nil)
	} else {
		entries := fs.Args()
		if entries == nil {
			entries = []string{}
		}
		b, _, err = c.call("PUT", "/v1/allowlist", map[string][]string{"clients": entries})
	}
	if err != nil {
		return err
	}
	if *nf.json {
		stdout.Write(b)
		return nil
	}
	var res struct {
		Clients []string `json:"clients"`
		Warning string   `json:"warning"`
	}
	json.Unmarshal(b, &res)
	if res.Warning != "" {
		fmt.Fprintln(stderr, "warning:", res.Warning)
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

func auditFetch(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit fetch")
	nf := addNodeFlags(fs)
	out := fs.String("o", "", "")
	c, err := connect(fs, nf, args)
	if err != nil {
		return err
	}
	b, h, err := c.call("GET", "/v1/audit", nil)
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
	if *out == "" {
		stdout.Write(b)
	} else if err := os.WriteFile(*out, b, 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "audit log: %d records, head %s\n", n, head)
	if from.Seq > 1 {
		fmt.Fprintf(stderr, "warning: this copy begins at record %d: the node has no audit file and keeps only its latest records in memory, so records 1 to %d are gone.\n"+
			"  verify it with: bulwarkctl audit verify FILE --start %d --anchor %s\n", from.Seq, from.Seq-1, from.Seq, from.Prev)
	}
	if verr != nil {
		return fmt.Errorf("the fetched log does not verify: %w", verr)
	}
	return nil
}

func auditVerify(args []string, stdout io.Writer) error {
	fs := newFlags("audit verify")
	head := fs.String("head", "", "")
	start := fs.Uint64("start", 1, "")
	anchor := fs.String("anchor", "", "")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"audit verify: give one log file"}
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	// --start/--anchor: a copy that begins after genesis (one fetched
	// from a node that keeps its log in memory only).
	from := audit.FromGenesis
	switch {
	case *start == 0:
		return usageError{"audit verify: --start counts from 1"}
	case *anchor != "" && len(*anchor) != 64:
		return usageError{"audit verify: --anchor is the 64 hex digits of the hash of the record before --start"}
	case *start == 1 && *anchor != "" && *anchor != audit.Genesis:
		return usageError{"audit verify: the record before record 1 is genesis (64 zeros); give --start with --anchor"}
	case *start > 1:
		from = audit.Anchor{Seq: *start, Prev: *anchor}
	}
	n, h, err := audit.VerifyFrom(f, from, *head)
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	switch {
	case from.Seq == 1:
		fmt.Fprintf(stdout, "%s: %d records, chain intact, head %s\n", fs.Arg(0), n, h)
	case from.Prev == "":
		fmt.Fprintf(stdout, "%s: %d records from seq %d, chain intact from there (its link to record %d is not checked: no --anchor), head %s\n", fs.Arg(0), n, from.Seq, from.Seq-1, h)
	default:
		fmt.Fprintf(stdout, "%s: %d records from seq %d, chain intact from the anchor, head %s\n", fs.Arg(0), n, from.Seq, h)
	}
	return nil
}

func shutdownCommand(args []string, stdout io.Writer) error {
	fs := newFlags("shutdown")
	nf := addNodeFlags(fs)
	wipe := fs.Bool("wipe", false, "")
	if err := parse(fs, args); err != nil {
		return err
	}
	if !*wipe {
		return usageError{"shutdown: say --wipe: a node only ever shuts down by crypto-erasing its volumes"}
	}
	c, err := nf.client()
	if err != nil {
		return err
	}
	b, _, err := c.call("POST", "/v1/shutdown", map[string]bool{"wipe": true})
	if err != nil {
		return err
	}
	return printResult(b, *nf.json, stdout)
}

func postCommand(path string, args []string, stdout io.Writer) error {
	fs := newFlags(path)
	nf := addNodeFlags(fs)
	c, err := connect(fs, nf, args)
	if err != nil {
		return err
	}
	b, _, err := c.call("POST", path, struct{}{})
	if err != nil {
		return err
	}
	return printResult(b, *nf.json, stdout)
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
