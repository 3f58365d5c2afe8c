package bulwark

import (
	"fmt"
	"os"
	"strings"

	"github.com/bulwarkvm/bulwark/internal/imagebuild"
)

// Artifact is the image's files with their digests.
type Artifact struct {
	dir    string
	report *imagebuild.Report
}

func (a *Artifact) BuilderId() string { return BuilderID }

func (a *Artifact) Files() []string {
	var f []string
	for _, x := range a.report.Artifacts {
		f = append(f, x.Path)
	}
	return f
}

// Id is the disk image's digest: the same inputs give the same id.
func (a *Artifact) Id() string {
	for _, x := range a.report.Artifacts {
		if strings.HasSuffix(x.Path, "bulwark.img") {
			return "sha256:" + x.SHA256
		}
	}
	return "sha256:" + a.report.Artifacts[0].SHA256
}

func (a *Artifact) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "bulwark image, kernel %s, in %s:", a.report.KernelVersion, a.dir)
	for _, x := range a.report.Artifacts {
		fmt.Fprintf(&b, "\n  %s  %d bytes  sha256:%s", x.Path, x.Bytes, x.SHA256)
	}
	return b.String()
}

// State answers "generated_data" like other builders, with the digests.
func (a *Artifact) State(name string) interface{} {
	if name != "generated_data" {
		return nil
	}
	m := map[string]string{"KernelVersion": a.report.KernelVersion}
	for _, x := range a.report.Artifacts {
		m[x.Path] = x.SHA256
	}
	return m
}

func (a *Artifact) Destroy() error { return os.RemoveAll(a.dir) }
