// Package tpmtest starts a software TPM for tests: Debian's swtpm on
// loopback, so that tests of the TPM code and of its users (the auditor's
// CLI) run against a real TPM 2.0 implementation. Nothing in the image
// imports it.
package tpmtest

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// Swtpm starts swtpm with a fresh state directory and returns a transport
// to it (for tpm.New); the TPM stops when the test ends.
func Swtpm(t testing.TB) transport.TPMCloser {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+t.TempDir(),
		"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port),
		"--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port+1),
		"--flags", "not-need-init,startup-clear")
	if err := cmd.Start(); err != nil {
		t.Fatalf("swtpm (make deps installs it): %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var conn net.Conn
	for i := 0; ; i++ {
		conn, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			break
		}
		if i == 100 {
			t.Fatalf("swtpm did not listen: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &rawConn{conn}
}

// rawConn sends TPM commands as they are and reads a response by the size
// in its header.
type rawConn struct{ c net.Conn }

func (r *rawConn) Send(cmd []byte) ([]byte, error) {
	if _, err := r.c.Write(cmd); err != nil {
		return nil, err
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(r.c, hdr); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[2:6])
	if n < 10 || n > 1<<20 {
		return nil, fmt.Errorf("response size %d", n)
	}
	rest := make([]byte, n-10)
	if _, err := io.ReadFull(r.c, rest); err != nil {
		return nil, err
	}
	return append(hdr, rest...), nil
}

func (r *rawConn) Close() error { return r.c.Close() }
