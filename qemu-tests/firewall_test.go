package qemutests

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// The firewall from outside: an allowed and a disallowed client on the
// bridge, a scan of every TCP port from each, and outbound connections
// from the node to an allowed and a disallowed destination. The node runs
// netprobe (from the test image) as its workload, listening on the client,
// peer, keying, management and an unconfigured port.
func TestFirewall(t *testing.T) {
	img := testImage(t)
	n := harness.NewNet(t)
	allowed := n.AddClient("10.99.0.20/24", "fd99::20/64")
	stranger := n.AddClient("10.99.0.50/24", "fd99::50/64") // outside 10.99.0.16/28
	dests := n.AddClient("10.99.0.40/24", "10.99.0.41/24")
	for _, a := range []string{"10.99.0.40:443", "10.99.0.41:443"} {
		ln, err := dests.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	cfg := fmt.Sprintf(`{"version": 1, "hostname": "fw-test",
		"network": {"interfaces": [{"name": "eth0", "addresses": ["10.99.0.10/24", "fd99::10/64"]}]},
		"firewall": {
			"client_ports": [5432],
			"clients": ["10.99.0.16/28", "fd99::20"],
			"peers": ["10.99.0.11"],
			"peer_ports": [5433],
			"management_sources": ["10.99.0.12"],
			"egress": {"backup": [{"address": "10.99.0.40", "port": 443}]}
		},
		"workload": {"command": ["%s/netprobe", "-listen", "5432,5433,7443,9443,8080", "-connect", "10.99.0.40:443,10.99.0.41:443"], "uid": 999, "gid": 999}}`, testBin)
	vm := harness.Start(t, harness.Options{Name: "firewall", Image: img, Config: []byte(cfg), Net: n})
	vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	vm.MustWaitFor(`^bulwark:   firewall: clients on tcp 5432 from 10\.99\.0\.16/28, fd99::20$`, time.Second)
	vm.MustWaitFor(`^bulwark: workload: netprobe: listening on`, time.Minute)

	// Outbound: the backup endpoint yes, anything else no.
	vm.MustWaitFor(`^bulwark: workload: netprobe: outbound 10\.99\.0\.40:443: connected$`, time.Minute)
	vm.MustWaitFor(`^bulwark: workload: netprobe: outbound 10\.99\.0\.41:443: refused$`, time.Minute)

	// Single connections, IPv4 and IPv6.
	try := func(c *harness.Client, addr string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := c.Dial(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := try(allowed, "10.99.0.10:5432"); err != nil {
		t.Errorf("allowed client, IPv4: %v", err)
	}
	if err := try(allowed, "[fd99::10]:5432"); err != nil {
		t.Errorf("allowed client, IPv6: %v", err)
	}
	for _, addr := range []string{"10.99.0.10:5432", "[fd99::10]:5432"} {
		if err := try(stranger, addr); err == nil {
			t.Errorf("stranger reached %s", addr)
		}
	}

	// Every TCP port, from each client.
	all := make([]int, 65535)
	for i := range all {
		all[i] = i + 1
	}
	t0 := time.Now()
	open, err := allowed.Scan("10.99.0.10", all, 256, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("scan from the allowed client (%s): open %v", time.Since(t0).Round(time.Second), open)
	if !slices.Equal(open, []int{5432}) {
		t.Errorf("from the allowed client, open ports are %v; want exactly [5432]", open)
	}
	t0 = time.Now()
	open, err = stranger.Scan("10.99.0.10", all, 256, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("scan from the stranger (%s): open %v", time.Since(t0).Round(time.Second), open)
	if len(open) != 0 {
		t.Errorf("from a disallowed address, open ports are %v; want none", open)
	}
	if err := vm.PowerOff(time.Minute); err != nil {
		t.Fatal(err)
	}
}
