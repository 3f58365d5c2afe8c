// Command backupbench measures the backup encryptor against its baselines
// in one run, on the same input file (docs/performance.md):
//
//   - Go's raw HMAC-SHA256 over the input (the binding limit: every byte
//     is MACed once, and AES-CTR is several times faster than SHA-256);
//   - our segment writer and reader with one worker and with all cores;
//   - openssl enc -aes-256-ctr piped into openssl dgst -sha256 -hmac;
//   - age (X25519, ChaCha20-Poly1305) encrypting and decrypting.
//
// It then measures the peak resident memory of a child process that
// encrypts 1 GiB and 4 GiB streams, to show memory flat in input size.
//
//	go run ./bench/backupbench [-mib 1024]
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bulwarkvm/bulwark/internal/backup"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "-child-encrypt" {
		childEncrypt(os.Args[2])
		return
	}
	mib := flag.Int("mib", 1024, "input size in MiB")
	flag.Parse()
	dir, err := os.MkdirTemp("", "backupbench")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	in := filepath.Join(dir, "input")
	writeInput(in, *mib)
	size := float64(*mib)

	k, err := backup.GenerateKey()
	if err != nil {
		log.Fatal(err)
	}
	kr, _ := backup.NewKeyring(k)
	h := backup.Header{Kind: backup.KindData, ChunkLog: backup.DefaultChunkLog, Index: 0}
	sealed := filepath.Join(dir, "sealed")
	cpus := runtime.GOMAXPROCS(0)

	rate := func(d time.Duration) float64 { return size / d.Seconds() }
	fmt.Printf("input %d MiB, %d CPUs, %s\n\n", *mib, cpus, runtime.Version())
	fmt.Printf("%-44s %10s %10s\n", "", "MiB/s", "vs HMAC")
	hm := best(func() { rawHMAC(in) })
	line := func(name string, d time.Duration) {
		fmt.Printf("%-44s %10.0f %10.2f\n", name, rate(d), rate(d)/rate(hm))
	}
	line("Go HMAC-SHA256 alone (baseline)", hm)
	enc := map[int]time.Duration{}
	dec := map[int]time.Duration{}
	encrypt(in, sealed, &k.PublicKey, h, cpus) // the input of the decrypt runs
	for _, w := range []int{1, cpus} {
		enc[w] = best(func() { encrypt(in, "", &k.PublicKey, h, w) })
		line(fmt.Sprintf("bulwark encrypt, %d worker(s)", w), enc[w])
		dec[w] = best(func() { decrypt(sealed, kr, w) })
		line(fmt.Sprintf("bulwark decrypt+verify, %d worker(s)", w), dec[w])
	}
	keyHex, ivHex := strings.Repeat("11", 32), strings.Repeat("22", 16)
	osl := best(func() {
		sh("openssl enc -aes-256-ctr -K " + keyHex + " -iv " + ivHex + " -in " + in + " | openssl dgst -sha256 -hmac " + keyHex + " >/dev/null")
	})
	line("openssl enc -aes-256-ctr | openssl dgst -hmac", osl)
	sh("age-keygen -o " + dir + "/age.key 2>/dev/null")
	rcpt := strings.TrimSpace(shOut("age-keygen -y " + dir + "/age.key"))
	sh("age -r " + rcpt + " -o " + dir + "/age.out " + in) // the input of the decrypt runs
	ageEnc := best(func() { sh("age -r " + rcpt + " -o /dev/null " + in) })
	line("age encrypt", ageEnc)
	ageDec := best(func() { sh("age -d -i " + dir + "/age.key -o /dev/null " + dir + "/age.out") })
	line("age decrypt", ageDec)

	fmt.Printf("\nscaling: encrypt %.2fx, decrypt %.2fx with %d workers against 1\n",
		enc[1].Seconds()/enc[cpus].Seconds(), dec[1].Seconds()/dec[cpus].Seconds(), cpus)
	fmt.Printf("one worker against HMAC alone: encrypt %.2f, decrypt %.2f\n", hm.Seconds()/enc[1].Seconds(), hm.Seconds()/dec[1].Seconds())
	fmt.Printf("all cores against openssl: encrypt %.2fx; against age: encrypt %.2fx, decrypt %.2fx\n",
		osl.Seconds()/enc[cpus].Seconds(), ageEnc.Seconds()/enc[cpus].Seconds(), ageDec.Seconds()/dec[cpus].Seconds())

	fmt.Println()
	for _, n := range []int{1024, 4096} {
		fmt.Printf("peak RSS encrypting a %d MiB stream with %d workers: %.1f MiB\n", n, cpus, childRSS(n))
	}
}

// best runs f three times and returns the fastest run.
func best(f func()) time.Duration {
	var b time.Duration
	for i := 0; i < 3; i++ {
		t := time.Now()
		f()
		if d := time.Since(t); b == 0 || d < b {
			b = d
		}
	}
	return b
}

func writeInput(path string, mib int) {
	f, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := 0; i < mib; i++ {
		rand.Read(buf)
		f.Write(buf)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
}

func rawHMAC(in string) {
	f, _ := os.Open(in)
	defer f.Close()
	m := hmac.New(sha256.New, make([]byte, 64))
	io.CopyBuffer(m, f, make([]byte, 1<<20))
	m.Sum(nil)
}

func encrypt(in, out string, pub *rsa.PublicKey, h backup.Header, workers int) {
	src, err := os.Open(in)
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	// Timed runs write to nowhere, like the openssl pipeline: the
	// figure is the encryptor's, not the disk's.
	var dst io.Writer = io.Discard
	if out != "" {
		f, err := os.Create(out)
		if err != nil {
			log.Fatal(err)
		}
		defer f.Close()
		dst = f
	}
	w, err := backup.NewSegmentWriter(dst, pub, h, workers)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := io.CopyBuffer(w, src, make([]byte, 1<<20)); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}
}

func decrypt(in string, kr backup.Keyring, workers int) {
	f, err := os.Open(in)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	r, err := backup.OpenSegment(f, kr, workers)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	if _, err := io.CopyBuffer(io.Discard, r, make([]byte, 1<<20)); err != nil {
		log.Fatal(err)
	}
}

func sh(script string) {
	cmd := exec.Command("sh", "-c", script)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		log.Fatalf("%s: %v", script, err)
	}
}

func shOut(script string) string {
	out, err := exec.Command("sh", "-c", script).Output()
	if err != nil {
		log.Fatalf("%s: %v", script, err)
	}
	return string(out)
}

// childRSS runs this program as a child that encrypts mib MiB of a
// generated stream to nowhere, and returns the child's peak RSS.
func childRSS(mib int) float64 {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(self, "-child-encrypt", strconv.Itoa(mib))
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		log.Fatal(err)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return float64(ru.Maxrss) / 1024 // kilobytes on Linux
}

func childEncrypt(arg string) {
	mib, err := strconv.Atoi(arg)
	if err != nil {
		log.Fatal(err)
	}
	k, err := backup.GenerateKey()
	if err != nil {
		log.Fatal(err)
	}
	h := backup.Header{Kind: backup.KindData, ChunkLog: backup.DefaultChunkLog}
	w, err := backup.NewSegmentWriter(io.Discard, &k.PublicKey, h, 0)
	if err != nil {
		log.Fatal(err)
	}
	block := bytes.Repeat([]byte{0x5a}, 1<<20)
	for i := 0; i < mib; i++ {
		if _, err := w.Write(block); err != nil {
			log.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}
}
