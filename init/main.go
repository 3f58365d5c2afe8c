// Command init is bulwark's PID1. The boot sequence below reads top to
// bottom; each stage lives in its own file. A stage that fails ends the boot
// in a locked-down halt (see halt.go): PID1 never exits and never panics
// into a kernel panic.
package main

import (
	"fmt"
	"os"

	svcproc "github.com/bulwarkvm/bulwark/services/service"
)

func main() {
	if len(os.Args) > 0 && os.Args[0] == svcproc.Argv0 {
		os.Exit(runService(os.Args)) // a service's process (service.go)
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "bulwark init: must run as PID 1 (it mounts file systems and powers the machine off)")
		os.Exit(2)
	}
	b := newBoot()
	defer b.recoverPanic()

	b.stage("mounts", mountPseudoFilesystems) // /proc /sys /dev /run, kernel log
	b.stage("hardening", harden)              // no core dumps, no kexec, no swap
	b.stage("modules", loadModules)           // early modules now; system image, volume and IPsec ones in the background
	b.stage("power button", watchPowerButton) // ACPI power button -> shutdown
	b.stage("entropy", waitForEntropy)        // kernel RNG ready before any key; TPM randomness mixed in
	b.stage("config", readConfig)             // fw_cfg or BULWARKCFG volume, strict
	b.stage("firewall", applyFirewall)        // default deny, then the policy; before any link is up
	b.stage("network", configureNetwork)      // links, addresses, routes, hostname
	b.stage("ipsec", startIPsec)              // ESP-only policies, keying with peers over mTLS
	b.stage("system image", setUpSystemImage) // root hash from the command line, dm-verity, read-only mount
	b.stage("volumes", setUpVolumes)          // fresh key, LUKS2, dm-crypt, ext4, mount
	b.stage("usr", mountSystemUsr)            // the system image becomes /usr
	b.stage("measure", measure)               // config, ruleset, LUKS2 headers, system image into PCR 15; attestation key
	b.stage("workload", startWorkload)        // the database, unprivileged, owns the volumes
	b.stage("backup", startBackups)           // public key only, store in the node's region, schedule
	b.stage("services", startServices)        // TLS front door, mTLS management API

	b.ready()           // readiness report, then "bulwark: ready"
	b.waitForShutdown() // power button, SIGTERM/SIGPWR/SIGINT
}
