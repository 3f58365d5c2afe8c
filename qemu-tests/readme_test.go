package qemutests

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestREADMEBoot runs the README's "Booting a node" QEMU command exactly
// as the markdown has it (taken from the file, so that a changed command
// cannot go stale) from the repository's root, and waits for the node to
// say it is ready. Its NIC is on a QEMU hub with no other port: nothing is
// sent anywhere.
func TestREADMEBoot(t *testing.T) {
	image(t) // out/ is built
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	// The command: its first line, and each line after one that ends
	// in a backslash.
	var cmd []string
	for _, l := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(l, "qemu-system-x86_64 ") || len(cmd) > 0 && strings.HasSuffix(cmd[len(cmd)-1], `\`) {
			cmd = append(cmd, l)
		} else if len(cmd) > 0 {
			break
		}
	}
	if len(cmd) == 0 {
		t.Fatal("README.md has no qemu-system-x86_64 command")
	}
	line := strings.Join(cmd, "\n")
	t.Logf("from README.md:\n%s", line)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, "bash", "-c", "exec "+line)
	c.Dir = ".."
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { c.Process.Kill(); c.Wait() }()
	sc := bufio.NewScanner(out)
	var seen []string
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		seen = append(seen, l)
		if strings.HasPrefix(l, "bulwark: FATAL") {
			t.Fatalf("the README's command: %s\n%s", l, strings.Join(seen, "\n"))
		}
		if l == "bulwark: ready" {
			return
		}
	}
	t.Fatalf("the README's command ended without bulwark: ready (%v):\n%s", ctx.Err(), strings.Join(seen, "\n"))
}
