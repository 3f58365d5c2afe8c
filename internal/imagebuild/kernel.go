package imagebuild

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// metaPackage is the Debian package whose dependency names the kernel.
const metaPackage = "linux-image-amd64"

var kernelPkg = regexp.MustCompile(`linux-image-([0-9][^ ,|]*-amd64)`)

// DiscoverKernel returns the version of the kernel that Debian's
// linux-image-amd64 package currently points at, and checks that its image
// and modules are installed under root. Without dpkg (another distribution,
// or a bare root), it falls back to the newest kernel under root that has
// both an image and a modules.dep.
func DiscoverKernel(root string) (string, error) {
	if out, err := exec.Command("dpkg-query", "--admindir", filepath.Join(root, "var/lib/dpkg"), "-W", "-f", "${Depends}", metaPackage).Output(); err == nil {
		if m := kernelPkg.FindStringSubmatch(string(out)); m != nil {
			if err := checkKernel(root, m[1]); err != nil {
				return "", err
			}
			return m[1], nil
		}
	}
	deps, _ := filepath.Glob(filepath.Join(root, "lib/modules/*/modules.dep"))
	var found []string
	for _, d := range deps {
		v := filepath.Base(filepath.Dir(d))
		if checkKernel(root, v) == nil {
			found = append(found, v)
		}
	}
	if len(found) == 0 {
		return "", fmt.Errorf("imagebuild: no kernel found under %s: install %s (make deps does)", root, metaPackage)
	}
	slices.SortFunc(found, compareVersions)
	return found[len(found)-1], nil
}

func checkKernel(root, v string) error {
	for _, p := range []string{KernelPath(root, v), filepath.Join(root, "lib/modules", v, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("imagebuild: kernel %s is incomplete: %w", v, err)
		}
	}
	return nil
}

// KernelPath is where Debian installs the kernel image of version v.
func KernelPath(root, v string) string {
	return filepath.Join(root, "boot", "vmlinuz-"+v)
}

// compareVersions orders kernel versions like "6.1.0-56-amd64" numerically
// field by field.
func compareVersions(a, b string) int {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' })
	}
	fa, fb := split(a), split(b)
	for i := 0; i < len(fa) && i < len(fb); i++ {
		var na, nb int
		_, ea := fmt.Sscanf(fa[i], "%d", &na)
		_, eb := fmt.Sscanf(fb[i], "%d", &nb)
		if ea == nil && eb == nil && na != nb {
			return na - nb
		}
		if c := strings.Compare(fa[i], fb[i]); (ea != nil || eb != nil) && c != 0 {
			return c
		}
	}
	return len(fa) - len(fb)
}
