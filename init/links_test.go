package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPID1LinksNoS3Client: the S3 client (minio-go, internal/objstore/s3)
// is linked only into the backup service's own program, so that its
// package initialisation runs in neither PID1 nor the services that are
// the init binary with a role (docs/boot.md, "One binary").
func TestPID1LinksNoS3Client(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "github.com/minio/") || strings.HasSuffix(pkg, "/internal/objstore/s3") || strings.HasSuffix(pkg, "/services/backup/cmd/bulwark-backup") {
			t.Errorf("the init links %s", pkg)
		}
	}
	// The control: the backup program does link it.
	out, err = exec.Command("go", "list", "-deps", "../services/backup/cmd/bulwark-backup").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "github.com/minio/minio-go/v7\n") {
		t.Error("the backup program does not link minio-go: this test would prove nothing")
	}
}
