// Command demo is make demo: it boots the built image under QEMU with an
// example config, on a test bridge in a private network namespace, shows the
// node's console (its readiness report), reaches it from a test client, and
// powers it off with the ACPI power button. It exits 0 only if every step
// worked.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// runner lets the harness run outside go test.
type runner struct {
	failed   bool
	cleanups []func()
}

func (r *runner) Helper()                      {}
func (r *runner) Logf(f string, a ...any)      { fmt.Printf(f+"\n", a...) }
func (r *runner) Cleanup(f func())             { r.cleanups = append(r.cleanups, f) }
func (r *runner) Failed() bool                 { return r.failed }
func (r *runner) Fatal(a ...any)               { r.fail(fmt.Sprint(a...)) }
func (r *runner) Fatalf(f string, a ...any)    { r.fail(fmt.Sprintf(f, a...)) }
func (r *runner) fail(msg string)              { r.failed = true; panic(failure(msg)) }
func (r *runner) step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

type failure string

func (r *runner) close() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func main() {
	out := flag.String("out", "out", "directory holding the built image")
	cfgPath := flag.String("config", "docs/examples/node-static.json", "node config")
	flag.Parse()
	r := &runner{}
	code := 0
	func() {
		defer func() {
			if p := recover(); p != nil {
				f, ok := p.(failure)
				if !ok {
					panic(p)
				}
				fmt.Fprintf(os.Stderr, "\ndemo FAILED: %s\n", f)
				code = 1
			}
		}()
		demo(r, *out, *cfgPath)
	}()
	r.close()
	os.Exit(code)
}

func demo(r *runner, out, cfgPath string) {
	img, err := harness.ImageFromDir(out)
	if err != nil {
		r.Fatal(err)
	}
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		r.Fatal(err)
	}
	r.step("test network: a bridge in a private namespace, a client at 10.99.0.20 and fd99::20")
	n := harness.NewNet(r)
	client := n.AddClient("10.99.0.20/24", "fd99::20/64")

	r.step("booting %s with %s (direct kernel boot, software emulation)", out, cfgPath)
	t0 := time.Now()
	vm := harness.Start(r, harness.Options{Name: "demo", Image: img, Config: cfg, Net: n, Echo: os.Stdout})
	vm.MustWaitFor(`^bulwark: ready$`, 3*time.Minute)
	fmt.Printf("node ready %.1fs after QEMU started\n", time.Since(t0).Seconds())

	r.step("reaching the node from the test client")
	for _, addr := range []string{"10.99.0.10", "fd99::10"} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		o, err := client.Command(ctx, "ping", "-c", "2", "-W", "5", addr).CombinedOutput()
		cancel()
		if err != nil {
			r.Fatalf("ping %s: %v\n%s", addr, err, o)
		}
		fmt.Printf("ping %s: %s\n", addr, summary(string(o)))
	}

	r.step("pressing the ACPI power button")
	if err := vm.PowerOff(time.Minute); err != nil {
		r.Fatal(err)
	}
	fmt.Println("\ndemo OK: the node booted, reported ready, answered on the test bridge and powered off cleanly")
}

func summary(ping string) string {
	for _, l := range strings.Split(ping, "\n") {
		if strings.Contains(l, "packets transmitted") {
			return l
		}
	}
	return strings.TrimSpace(ping)
}
