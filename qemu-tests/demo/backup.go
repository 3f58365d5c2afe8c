package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bulwarkvm/bulwark/internal/objstore/miniotest"
	"github.com/bulwarkvm/bulwark/qemu-tests/harness"
)

// The demo's object storage: a MinIO server at 10.99.0.40 on the test
// bridge, bucket "backups" in region eu-north-1.
const (
	s3Addr   = "10.99.0.40:9000"
	s3Region = "eu-north-1"
)

// startStore starts the MinIO server in a host of its own on the bridge.
func startStore(r *runner, n *harness.Net) {
	host := n.AddClient("10.99.0.40/24")
	srv := miniotest.Start(r, miniotest.Options{Addr: s3Addr, Region: s3Region, Netns: host.NS, Dial: host.Dial})
	srv.MakeBucket(r, "backups")
}

// backupSection is the node's backup config: the service's public key, the
// bucket, and its data volume as a tree, backed up on request and once more
// at shutdown.
func (p *demoPKI) backupSection(r *runner) map[string]any {
	pub, err := os.ReadFile(filepath.Join(p.dir, "svc.pub"))
	if err != nil {
		r.Fatal(err)
	}
	return map[string]any{
		"region":            s3Region,
		"public_key":        string(pub),
		"segment_mib":       16,
		"final_on_shutdown": true,
		"store": map[string]any{"s3": map[string]any{
			"endpoint": "http://" + s3Addr, "allow_http": true, "bucket": "backups", "prefix": "demo",
			"access_key": miniotest.AccessKey, "secret_key": miniotest.SecretKey,
		}},
		"sources": []map[string]any{{"kind": "tree", "path": "/var/lib/postgresql"}},
	}
}

// backupStore is bulwarkctl's view of the bucket, from the host.
func backupStore() []string {
	os.Setenv("AWS_ACCESS_KEY_ID", miniotest.AccessKey)
	os.Setenv("AWS_SECRET_ACCESS_KEY", miniotest.SecretKey)
	return []string{"--store", "s3://backups/demo", "--endpoint", "http://" + s3Addr, "--region", s3Region, "--allow-http"}
}

// showFinalBackup lists the bucket after the node has powered off: the
// round it ran at shutdown, after its workload stopped and before its
// volumes were erased, is there beside the one made on request.
func (p *demoPKI) showFinalBackup(r *runner, ops *harness.Client) {
	list := p.ctl(r, ops, "", 0, append([]string{"backup", "list"}, backupStore()...)...)
	fmt.Printf("bulwarkctl backup list:\n%s", list)
	if n := strings.Count(list, "complete"); n != 2 {
		r.Fatalf("%d complete backups after shutdown, want 2 (on request, and the final round)", n)
	}
}

// showBackup has the node back up its volume, then lists, verifies and
// restores the backup on the host with the private key, and checks what
// came back: the workload's files, not the node's own directory.
func (p *demoPKI) showBackup(r *runner, vm *harness.VM, ops *harness.Client) {
	fmt.Print(p.ctl(r, ops, "robot", 0, "backup", "start"))
	done := vm.MustWaitFor(`^bulwark: backup: backup [0-9a-f]{32} `+s3Region+` complete: `, 3*time.Minute)
	fmt.Println("  " + done.Text)
	id := strings.Fields(strings.TrimPrefix(done.Text, "bulwark: backup: backup "))[0]
	store := backupStore()
	fmt.Printf("bulwarkctl backup list:\n%s", p.ctl(r, ops, "", 0, append([]string{"backup", "list"}, store...)...))
	key := filepath.Join(p.dir, "svc.key")
	fmt.Print(p.ctl(r, ops, "", 0, append([]string{"backup", "verify", "--quiet", "--key", key, "--node", "db-node-1", "--id", id}, store...)...))
	to := filepath.Join(p.dir, "restored")
	fmt.Print(p.ctl(r, ops, "", 0, append([]string{"backup", "restore", "--quiet", "--key", key, "--node", "db-node-1", "--id", id, "--to", to}, store...)...))
	// The node's own directory (the audit log, the staging area) is never
	// part of a backup of the volume it lies on.
	var entries []string
	filepath.WalkDir(to, func(path string, d fs.DirEntry, err error) error {
		if err == nil && path != to {
			rel, _ := filepath.Rel(to, path)
			if d.IsDir() {
				rel += "/"
			}
			entries = append(entries, rel)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(to, ".bulwark")); !os.IsNotExist(err) {
		r.Fatalf("the restored tree holds the node's own .bulwark directory (stat: %v)", err)
	}
	if len(entries) == 0 {
		r.Fatalf("the restored tree is empty")
	}
	fmt.Printf("restored: %s (the node's .bulwark directory, with its audit log, is not in the backup)\n", strings.Join(entries, ", "))
	p.ctl(r, nil, "", 0, "backup", "keygen", "--out", filepath.Join(p.dir, "other"))
	fmt.Printf("another service's private key: %s", p.ctl(r, ops, "", 1, append([]string{"backup", "verify", "--quiet", "--key", filepath.Join(p.dir, "other.key"), "--node", "db-node-1", "--id", id}, store...)...))
}
