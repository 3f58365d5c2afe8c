package qemutests

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

const (
	bootTimeout = 120 * time.Second
	offTimeout  = 60 * time.Second
)

// TestDirectBoot boots the kernel and initramfs directly with a static
// address on the test bridge: the node reports every stage, a test client
// reaches it over IPv4 and IPv6, and the power button powers it off cleanly.
func TestDirectBoot(t *testing.T) {
	n := harness.NewNet(t)
	client := n.AddClient("10.99.0.20/24", "fd99::20/64")
	stranger := n.AddClient("10.99.0.30/24")
	vm := harness.Start(t, harness.Options{Name: "direct", Image: image(t), Config: example(t, "node-static.json"), Net: n, Pcap: true})
	ready := vm.MustWaitFor(`^bulwark: ready$`, bootTimeout)
	t.Logf("ready after %.1fs", ready.At.Seconds())

	console := vm.Console()
	for _, stage := range []string{"mounts", "hardening", "modules", "power button", "entropy", "config", "network"} {
		if !strings.Contains(console, "bulwark:   "+stage+" ") {
			t.Errorf("readiness report lacks stage %q", stage)
		}
	}
	if strings.Contains(console, " failed ") {
		t.Errorf("a stage failed")
	}
	if !strings.Contains(console, "eth0 10.99.0.10/24 fd99::10/64 mtu 1500") {
		t.Errorf("network detail missing from the report")
	}
	if !strings.Contains(console, "kernel RNG ready, no TPM") {
		t.Errorf("a node without a TPM did not report \"no TPM\"")
	}
	// Configured through fw_cfg, the node never loads the config
	// volume's file systems.
	if strings.Contains(console, "config volume modules loaded") {
		t.Errorf("a node configured through fw_cfg loaded the config volume's modules")
	}
	// This node needs no background module before ready, so some load
	// after the usr stage has covered the initramfs's /usr (and
	// /lib/modules) with the system image: every one must still load.
	if bg := vm.MustWaitFor(`^bulwark: background modules loaded: `, 30*time.Second); bg.At < ready.At {
		t.Logf("note: the background modules were loaded before ready (%.1fs < %.1fs), so before the usr stage: this boot did not exercise loading them behind the system image", bg.At.Seconds(), ready.At.Seconds())
	}
	for _, l := range vm.Lines() {
		if strings.Contains(l.Text, "module not loaded") {
			t.Errorf("%s", l.Text)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, target := range []string{"10.99.0.10", "fd99::10"} {
		out, err := client.Command(ctx, "ping", "-c", "3", "-W", "5", target).CombinedOutput()
		if err != nil {
			t.Errorf("ping %s from the test client: %v\n%s", target, err, out)
		}
	}
	// The capture saw the echo replies leave the node.
	if st, err := os.Stat(vm.PcapPath()); err != nil || st.Size() < 24+6*(16+98) {
		t.Errorf("capture %s holds less than six ICMP packets: %v", vm.PcapPath(), err)
	}
	// The harness itself must be able to tell failure: an address nobody
	// holds does not answer.
	if out, err := stranger.Command(ctx, "ping", "-c", "1", "-W", "2", "10.99.0.99").CombinedOutput(); err == nil {
		t.Errorf("ping of an unused address succeeded:\n%s", out)
	}

	if err := vm.PowerOff(offTimeout); err != nil {
		t.Fatal(err)
	}
}

// TestUEFIBoot boots the GPT disk through OVMF and systemd-boot, with the
// config on a BULWARKCFG volume instead of fw_cfg and a TPM (swtpm). The
// loader entry binds the system image's root hash: the node finds the
// image's usr and usr-verity partitions on the disk, mounts it on /usr and
// measures it.
func TestUEFIBoot(t *testing.T) {
	rep, _ := builtReport(t, image(t))
	vm := harness.Start(t, harness.Options{Name: "uefi", Image: image(t), UEFI: true,
		Config: []byte(`{"version":1,"hostname":"uefi-node"}`), ConfigVolume: true, TPM: true})
	ready := vm.MustWaitFor(`^bulwark: ready$`, 2*bootTimeout)
	t.Logf("ready after %.1fs", ready.At.Seconds())
	if !strings.Contains(vm.Console(), "config accepted source=\"volume BULWARKCFG") {
		t.Errorf("config did not come from the volume")
	}
	// The file system modules load on demand, when the volume is found.
	vm.MustWaitFor(`^bulwark: config volume modules loaded: 5 modules in `, time.Second)
	if !strings.Contains(vm.Console(), "kernel RNG ready, TPM 2.0 at /dev/tpmrm0 mixed into every key") {
		t.Errorf("the node did not see the swtpm TPM")
	}
	// PCR 15 was zero when the init measured: neither OVMF nor
	// systemd-boot extends it (docs/attestation.md relies on that).
	vm.MustWaitFor(`^bulwark:   system image +ok +\S+ +root hash `+rep.SystemImage.RootHash[:16]+`…, /dev/vd[a-z]2 and /dev/vd[a-z]3 \(usr and usr-verity partitions\)`, time.Second)
	vm.MustWaitFor(`^bulwark:   usr +ok +\S+ +the system image on /usr`, time.Second)
	vm.MustWaitFor(`^bulwark:   measure +ok .*PCR 15: 3 events \(config, firewall ruleset, 0 LUKS2 headers, system image\)`, time.Second)
	if err := vm.PowerOff(offTimeout); err != nil {
		t.Fatal(err)
	}
}

// TestBadConfig: an invalid, a missing and an ambiguous config each halt the
// node with a FATAL line that says why, and it never becomes ready.
func TestBadConfig(t *testing.T) {
	cases := []struct {
		name   string
		opts   harness.Options
		reason string
	}{
		{"invalid field", harness.Options{Config: example(t, "invalid-mtu.json")}, `network\.interfaces\[0\]\.mtu: 70000 is out of range`},
		{"unknown field", harness.Options{Config: []byte(`{"version":1,"hostname":"n","sshd":true}`)}, `config: sshd: unknown field`},
		{"missing", harness.Options{}, `config: none found`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := c.opts
			o.Name, o.Image, o.ExpectFatal = "badcfg", image(t), true
			vm := harness.Start(t, o)
			vm.MustWaitFor(`^bulwark: FATAL: .*`+c.reason, bootTimeout)
			vm.MustWaitFor(`^bulwark: halted`, 10*time.Second)
			for _, l := range vm.Lines() {
				if l.Text == "bulwark: ready" {
					t.Fatal("a node with a bad config said ready")
				}
			}
			// Halted, it still powers off on request.
			if err := vm.PowerOff(offTimeout); err != nil {
				t.Fatal(err)
			}
		})
	}
}
