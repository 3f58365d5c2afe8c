// Command gen writes the backup format's test vectors into
// internal/backup/testdata: a test key pair (kept if present), good
// segments of a few sizes and bad ones, each with the error a reader must
// give, listed in vectors.json. Run it from the repository root:
//
//	go run ./internal/backup/testdata/gen
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log"
	"os"
	"path/filepath"

	"github.com/bulwarkvm/bulwark/internal/backup"
)

const dir = "internal/backup/testdata"

// Vector is one entry of vectors.json.
type Vector struct {
	File string `json:"file"`
	// Good vectors: the plaintext's length and SHA-256 (the plaintext is
	// backup.TestPattern of that length).
	PlaintextLen    int    `json:"plaintext_len,omitempty"`
	PlaintextSHA256 string `json:"plaintext_sha256,omitempty"`
	// Bad vectors: a part of the error the reader must give.
	Error string `json:"error,omitempty"`
}

func main() {
	keyFile := filepath.Join(dir, "test-key.pem")
	pemKey, err := os.ReadFile(keyFile)
	if os.IsNotExist(err) {
		k, err := backup.GenerateKey()
		if err != nil {
			log.Fatal(err)
		}
		if pemKey, err = backup.PrivateKeyPEM(k); err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(keyFile, pemKey, 0o644); err != nil {
			log.Fatal(err)
		}
	} else if err != nil {
		log.Fatal(err)
	}
	k, err := backup.ParsePrivateKey(pemKey)
	if err != nil {
		log.Fatal(err)
	}
	const chunkLog = 16
	c := 1 << chunkLog
	h := backup.Header{Kind: backup.KindData, ChunkLog: chunkLog, Backup: backup.BackupID{0xb, 0xac, 0x0b}, Index: 0}
	seal := func(n int) []byte {
		var out bytes.Buffer
		w, err := backup.NewSegmentWriter(&out, &k.PublicKey, h, 1)
		if err != nil {
			log.Fatal(err)
		}
		w.Write(backup.TestPattern(n))
		if err := w.Close(); err != nil {
			log.Fatal(err)
		}
		return out.Bytes()
	}
	var vs []Vector
	write := func(v Vector, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, v.File), b, 0o644); err != nil {
			log.Fatal(err)
		}
		vs = append(vs, v)
	}
	good := map[string]int{"empty": 0, "one-byte": 1, "one-chunk": c, "chunk-plus-one": c + 1, "three-chunks": 2*c + 500}
	var multi []byte
	for _, name := range []string{"empty", "one-byte", "one-chunk", "chunk-plus-one", "three-chunks"} {
		n := good[name]
		seg := seal(n)
		sum := sha256.Sum256(backup.TestPattern(n))
		write(Vector{File: "good-" + name + ".seg", PlaintextLen: n, PlaintextSHA256: hex.EncodeToString(sum[:])}, seg)
		multi = seg
	}
	const hdr = 450
	at := func(i int) int { return hdr + i*(c+32) }
	flip := func(off int) []byte {
		b := bytes.Clone(multi)
		b[off] ^= 1
		return b
	}
	other := seal(2*c + 500)
	spliced := bytes.Clone(multi)
	copy(spliced[at(1):at(2)], other[at(1):at(2)])
	bad := []struct {
		name, err string
		b         []byte
	}{
		{"empty-file", "empty segment", nil},
		{"bad-magic", "bad magic", flip(1)},
		{"bad-version", "version", flip(8)},
		{"unknown-key-id", "not among the private keys", flip(12)},
		{"altered-backup-id", "chunk 0: authentication failed", flip(44)},
		{"altered-wrapped-secret", "does not decrypt", flip(300)},
		{"header-only", "no chunk", multi[:hdr]},
		{"truncated-at-chunk-boundary", "not its final chunk", multi[:at(2)]},
		{"truncated-inside-chunk", "chunk 1: authentication failed", multi[:at(1)+99]},
		{"altered-chunk", "chunk 1: authentication failed", flip(at(1) + 7)},
		{"altered-tag", "chunk 2: authentication failed", flip(len(multi) - 1)},
		{"trailing-data", "chunk 2: authentication failed", append(bytes.Clone(multi), 'x')},
		{"reordered-chunks", "chunk 0: authentication failed", append(append(append(bytes.Clone(multi[:hdr]), multi[at(1):at(2)]...), multi[at(0):at(1)]...), multi[at(2):]...)},
		{"duplicated-chunk", "chunk 1: authentication failed", append(append(bytes.Clone(multi[:at(1)]), multi[at(0):]...))},
		{"spliced-chunk", "chunk 1: authentication failed", spliced},
	}
	for _, b := range bad {
		write(Vector{File: "bad-" + b.name + ".seg", Error: b.err}, b.b)
	}
	j, _ := json.MarshalIndent(vs, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "vectors.json"), append(j, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %d vectors to %s", len(vs), dir)
}
