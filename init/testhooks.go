//go:build bulwarktest

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bulwarkvm/bulwark/internal/secret"
	"github.com/bulwarkvm/bulwark/internal/volume"
)

// TestHook is the test image's way to break a service on purpose
// (TestServiceIsolation): "kill" sends it SIGKILL from PID1, "memscan"
// searches its memory for the node's secrets it must not hold; any other
// hook is the service's own test operation ("test.panic",
// "test.forbidden-syscall"), compiled only into the test image.
func (b *boot) TestHook(name, hook string) (any, error) {
	if name == "pid1" && hook == "memscan" {
		// The scan's own control: PID1 holds the S3 secret key (in its
		// configuration), so the scan must find it here.
		return b.memScan(os.Getpid())
	}
	var s *service
	for _, x := range b.services {
		if x.name == name {
			s = x
		}
	}
	if s == nil {
		return nil, fmt.Errorf("no service %q", name)
	}
	s.mu.Lock()
	p := s.p
	s.mu.Unlock()
	switch hook {
	case "kill":
		if p == nil {
			return nil, fmt.Errorf("service %s is not running", name)
		}
		return fmt.Sprintf("SIGKILL to pid %d", p.Pid()), p.Signal(syscall.SIGKILL)
	case "memscan":
		if p == nil {
			return nil, fmt.Errorf("service %s is not running", name)
		}
		return b.memScan(p.Pid())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var res any
	err := s.call(ctx, "test."+hook, nil, &res)
	return res, err
}

// The test image records every key the volume stage draws (the volume
// keys and the keyslot passphrases), in locked memory, so that memscan
// can look for them; the production image has no such copy.
var (
	drawnMu sync.Mutex
	drawn   []*secret.Buf
)

func testVolumeOptions(o *volume.Options) {
	o.Random = func(n int) (*secret.Buf, error) {
		b, err := secret.Random(n)
		if err != nil {
			return nil, err
		}
		c, err := secret.New(n)
		if err != nil {
			b.Destroy()
			return nil, err
		}
		copy(c.Bytes(), b.Bytes())
		drawnMu.Lock()
		drawn = append(drawn, c)
		drawnMu.Unlock()
		return b, nil
	}
}

// MemScan is memscan's answer: how much of the process's memory was
// read, whether the control (the node's certificate, which every service
// holds) was found, and which secrets were.
type MemScan struct {
	Pid     int      `json:"pid"`
	Regions int      `json:"regions"`
	Bytes   int64    `json:"bytes"`
	Control bool     `json:"control_found"`
	Found   []string `json:"secrets_found"`
	Needles []string `json:"secrets_searched"`
}

// memScan reads every readable mapping of process pid through
// /proc/<pid>/mem (PID1 may: it has CAP_SYS_PTRACE) and searches it for
// the halves of each volume key and passphrase, the S3 secret key, a line
// of the node's TLS key in PEM, and the node's certificate as the
// control.
func (b *boot) memScan(pid int) (*MemScan, error) {
	type needle struct {
		name string
		b    []byte
	}
	var needles []needle
	drawnMu.Lock()
	for i, d := range drawn {
		k := d.Bytes()
		needles = append(needles, needle{fmt.Sprintf("volume key draw %d, first half", i), k[:len(k)/2]},
			needle{fmt.Sprintf("volume key draw %d, second half", i), k[len(k)/2:]})
	}
	drawnMu.Unlock()
	if bk := b.cfg.Backup; bk != nil && bk.Store.S3 != nil && bk.Store.S3.SecretKey != "" {
		needles = append(needles, needle{"S3 secret key", []byte(bk.Store.S3.SecretKey)})
	}
	if t := b.cfg.TLS; t != nil {
		if lines := strings.Split(t.Key, "\n"); len(lines) > 2 {
			needles = append(needles, needle{"TLS key PEM line", []byte(lines[1])})
		}
	}
	control := b.nodeCert.Certificate[0]
	res := &MemScan{Pid: pid}
	for _, n := range needles {
		res.Needles = append(res.Needles, n.name)
	}
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer maps.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, err
	}
	defer mem.Close()
	found := map[string]bool{}
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[1][0] != 'r' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || end <= start || end-start > 1<<30 {
			continue
		}
		// In chunks, each overlapping the last by the longest needle, so
		// that PID1 never holds a whole arena.
		over := len(control)
		for _, nd := range needles {
			over = max(over, len(nd.b))
		}
		var got int64
		buf := make([]byte, 0, 4<<20+over)
		for at := start; at < end; {
			want := min(end-at, 4<<20)
			tail := len(buf)
			buf = buf[:tail+int(want)]
			n, _ := mem.ReadAt(buf[tail:], int64(at))
			if n == 0 {
				break // [vvar] and the like cannot be read
			}
			buf = buf[:tail+n]
			got += int64(n)
			at += uint64(n)
			if bytes.Contains(buf, control) {
				res.Control = true
			}
			for _, nd := range needles {
				if bytes.Contains(buf, nd.b) {
					found[nd.name] = true
				}
			}
			keep := min(len(buf), over-1)
			copy(buf, buf[len(buf)-keep:])
			buf = buf[:keep]
		}
		if got > 0 {
			res.Regions++
			res.Bytes += got
		}
	}
	for _, n := range needles {
		if found[n.name] {
			res.Found = append(res.Found, n.name)
		}
	}
	return res, sc.Err()
}
