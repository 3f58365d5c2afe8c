// Package kmod holds the list of kernel modules the node needs and loads it
// when the node boots, in the dependency order of the modules.dep the image
// carries. The image build resolves the list against the kernel (package
// resolve, with u-root's kmodule).
package kmod

import (
	"bytes"
	"fmt"
	"strings"
)

// Module is one module the node loads at boot.
type Module struct {
	Name string
	// Optional modules depend on the CPU or the platform (for example
	// aesni_intel needs the AES instructions); failing to load one is a
	// warning, not a fatal error.
	Optional bool
	// Late modules are loaded after all the others: their init tests
	// algorithms that other modules provide (drbg's self-test needs
	// hmac(sha512)), and the others load in parallel.
	Late bool
	// OnDemand modules are loaded only when a stage asks for them: the
	// config volume's file systems, which a node configured through
	// fw_cfg never mounts.
	OnDemand bool
	// Background modules serve only the stages after the network
	// (volumes, IPsec): the init loads them while the config, firewall
	// and network stages run, and those stages wait for them.
	Background bool
	// First background modules load before the other background ones,
	// and a stage can wait for them alone: the system image stage, which
	// every node runs right after the network, needs dm-verity and
	// squashfs, not the volumes' and IPsec's modules.
	First bool
	// Why says what needs it.
	Why string
}

// Modules is the one list of kernel modules in the image. Neither kmodule
// (at build time) nor the Loader (at boot) follows modules.softdep, so soft
// dependencies (ecb for xts, crc32c for ext4) are named here explicitly. Modules that Debian builds into the kernel
// (aes, sha256, cbc, tpm_tis, tpm_crb, af_packet) are resolved as built-in.
var Modules = []Module{
	{Name: "virtio_pci", Why: "virtio devices"},
	{Name: "virtio_blk", Why: "data and config disks"},
	{Name: "virtio_net", Why: "network"},
	{Name: "virtio_rng", Why: "entropy from the host"},
	{Name: "qemu_fw_cfg", Why: "config from QEMU fw_cfg"},
	{Name: "evdev", Why: "power button events"},
	{Name: "button", Why: "ACPI power button"},
	{Name: "dm_crypt", Background: true, Why: "encrypted volumes"},
	{Name: "ecb", Background: true, Why: "soft dependency of xts"},
	{Name: "xts", Background: true, Why: "aes-xts-plain64"},
	{Name: "aesni_intel", Background: true, Optional: true, Why: "AES instructions"},
	{Name: "crc32c_generic", Why: "ext4 metadata checksums; libcrc32c (under nf_conntrack) needs it when it loads"},
	{Name: "crc32c_intel", Optional: true, Why: "faster crc32c"},
	{Name: "ext4", Background: true, Why: "data volume filesystem"},
	{Name: "dm_verity", Background: true, First: true, Why: "the verified system image (dm-verity)"},
	{Name: "sha256_ssse3", Background: true, First: true, Optional: true, Why: "faster SHA-256 for dm-verity"},
	{Name: "squashfs", Background: true, First: true, Why: "the system image's file system"},
	{Name: "nls_cp437", OnDemand: true, Why: "vfat config volume"},
	{Name: "nls_ascii", OnDemand: true, Why: "vfat config volume"},
	{Name: "nls_utf8", OnDemand: true, Why: "vfat config volume"},
	{Name: "vfat", OnDemand: true, Why: "vfat config volume"},
	{Name: "isofs", OnDemand: true, Why: "iso9660 config volume"},
	{Name: "nf_tables", Why: "firewall"},
	{Name: "nf_conntrack", Why: "firewall state"},
	{Name: "nft_ct", Why: "firewall state"},
	{Name: "nft_reject_inet", Why: "firewall rejects"},
	{Name: "nft_limit", Why: "firewall rate limits"},
	{Name: "xfrm_user", Background: true, Why: "IPsec states and policies"},
	{Name: "esp4", Background: true, Why: "IPsec ESP (IPv4)"},
	{Name: "esp6", Background: true, Why: "IPsec ESP (IPv6)"},
	{Name: "ctr", Background: true, Why: "AES-GCM for ESP"},
	{Name: "ghash_generic", Background: true, Why: "AES-GCM for ESP"},
	{Name: "ghash_clmulni_intel", Background: true, Optional: true, Why: "faster GHASH"},
	{Name: "gcm", Background: true, Why: "AES-GCM for ESP"},
	{Name: "seqiv", Background: true, Why: "ESP IV generation"},
	{Name: "sha512_generic", Background: true, Why: "drbg's HMAC-SHA512 generator"},
	{Name: "drbg", Background: true, Late: true, Why: "ESP IV generation (seqiv seeds its salt from stdrng)"},
	{Name: "echainiv", Background: true, Why: "ESP IV generation"},
	{Name: "authenc", Background: true, Why: "ESP"},
	{Name: "tpm_crb", Why: "TPM 2.0 (CRB interface)"},
	{Name: "tpm_tis", Why: "TPM 2.0 (TIS interface)"},
}

// Names returns the module names of a list.
func Names(mods []Module) []string {
	var n []string
	for _, m := range mods {
		n = append(n, m.Name)
	}
	return n
}

// CompressedSuffix ends the name of a module file the image carries
// compressed (gzip); the loader decompresses it.
const CompressedSuffix = ".gz"

// Split divides a list into the modules the early stages need, the ones
// loaded on demand, the background ones to load first, and the other
// background ones.
func Split(mods []Module) (early, onDemand, first, background []Module) {
	for _, m := range mods {
		switch {
		case m.OnDemand:
			onDemand = append(onDemand, m)
		case m.Background && m.First:
			first = append(first, m)
		case m.Background:
			background = append(background, m)
		default:
			early = append(early, m)
		}
	}
	return early, onDemand, first, background
}

// ParseList reads a module list as the image ships it: one name per line,
// then its flags: optional, late, background, first, ondemand.
func ParseList(b []byte) ([]Module, error) {
	var mods []Module
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		m := Module{Name: f[0]}
		for _, flag := range f[1:] {
			switch flag {
			case "optional":
				m.Optional = true
			case "late":
				m.Late = true
			case "background":
				m.Background = true
			case "first":
				m.First = true
			case "ondemand":
				m.OnDemand = true
			default:
				return nil, fmt.Errorf("kmod: module list line %d: %q is not \"name [optional] [late] [background] [first] [ondemand]\"", i+1, line)
			}
		}
		mods = append(mods, m)
	}
	return mods, nil
}

// FormatList writes a module list in the format ParseList reads.
func FormatList(mods []Module) []byte {
	var b bytes.Buffer
	for _, m := range mods {
		b.WriteString(m.Name)
		if m.Optional {
			b.WriteString(" optional")
		}
		if m.Late {
			b.WriteString(" late")
		}
		if m.Background {
			b.WriteString(" background")
		}
		if m.First {
			b.WriteString(" first")
		}
		if m.OnDemand {
			b.WriteString(" ondemand")
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}
