package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestConfigCheck(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"config", "check", "../../docs/examples/node-static.json"}, &out, &errb); code != 0 {
		t.Fatalf("valid config: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "valid (version 1, hostname db-node-1") {
		t.Fatalf("output %q", out.String())
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"config", "check", "../../docs/examples/invalid-mtu.json"}, &out, &errb); code != 1 {
		t.Fatalf("invalid config: exit %d", code)
	}
	if !strings.Contains(errb.String(), "network.interfaces[0].mtu") {
		t.Fatalf("error %q does not name the field", errb.String())
	}
	if code := run([]string{"frobnicate", "now"}, &out, &errb); code != 2 {
		t.Fatalf("unknown command: exit %d", code)
	}
}
