package frontdoor

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// tlsEcho is the baseline: a TLS server that terminates and echoes itself,
// with the same certificate, so that the only difference to the front
// door is the proxy hop.
func tlsEcho(b *testing.B, cert tls.Certificate) string {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		b.Fatal(err)
	}
	return echoOn(b, ln)
}

// BenchmarkHandshakes: full TLS 1.3 handshakes (plus one byte echoed, so
// that the front door's connection to the workload is made) per second,
// through the front door and against the baseline, in one run.
func BenchmarkHandshakes(b *testing.B) {
	f := newFixture(b)
	door := f.start(b, Options{Protocol: TLS, MaxPerSource: 1 << 20}).Addr().String()
	direct := tlsEcho(b, f.server)
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "db.test", ClientSessionCache: nil}
	one := func(addr string) {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		c.Write([]byte{1})
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	var viaDoor, viaDirect time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		one(door)
		viaDoor += time.Since(t0)
		t0 = time.Now()
		one(direct)
		viaDirect += time.Since(t0)
	}
	b.ReportMetric(float64(b.N)/viaDoor.Seconds(), "handshakes/s-front-door")
	b.ReportMetric(float64(b.N)/viaDirect.Seconds(), "handshakes/s-direct-tls")
	b.ReportMetric(viaDirect.Seconds()/viaDoor.Seconds(), "ratio")
}

// BenchmarkThroughput: 64 MiB echoed through the front door, against the
// baseline TLS echo server and against plain TCP to the workload, in one
// run.
func BenchmarkThroughput(b *testing.B) {
	f := newFixture(b)
	door := f.start(b, Options{Protocol: TLS}).Addr().String()
	direct := tlsEcho(b, f.server)
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "db.test"}
	const size = 64 << 20
	chunk := make([]byte, 256<<10)
	pump := func(c net.Conn) time.Duration {
		t0 := time.Now()
		done := make(chan error, 1)
		go func() {
			_, err := io.CopyN(io.Discard, c, size)
			done <- err
		}()
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		c.Close()
		return time.Since(t0)
	}
	var tDoor, tDirect, tPlain time.Duration
	for i := 0; i < b.N; i++ {
		c, err := tls.Dial("tcp", door, cfg)
		if err != nil {
			b.Fatal(err)
		}
		tDoor += pump(c)
		c, err = tls.Dial("tcp", direct, cfg)
		if err != nil {
			b.Fatal(err)
		}
		tDirect += pump(c)
		p, err := net.Dial("tcp", f.backend)
		if err != nil {
			b.Fatal(err)
		}
		tPlain += pump(p)
	}
	mib := float64(b.N) * size / (1 << 20)
	b.ReportMetric(mib/tDoor.Seconds(), "MiB/s-front-door")
	b.ReportMetric(mib/tDirect.Seconds(), "MiB/s-direct-tls")
	b.ReportMetric(mib/tPlain.Seconds(), "MiB/s-plain-tcp")
	b.ReportMetric(tDirect.Seconds()/tDoor.Seconds(), "ratio-vs-direct-tls")
}
