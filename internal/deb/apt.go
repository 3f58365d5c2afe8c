package deb

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Ref is one package at an exact version.
type Ref struct {
	Name, Version, Arch string
}

func (r Ref) String() string { return r.Name + "=" + r.Version }

// Record is what apt's index says about one package version: where its
// .deb is, how large it is, its SHA-256 (which apt has from the signed
// Release file through the Packages index), and Debian's installed size.
type Record struct {
	Ref
	Filename       string // path in the archive, pool/main/...
	Size           int64
	SHA256         string
	InstalledBytes int64 // Installed-Size, which the control file gives in KiB
	Depends        string
}

// HostArchive is the host's apt cache, where apt-get install leaves the
// .debs it fetched; a file found there with the right digest is used
// instead of a download.
const HostArchive = "/var/cache/apt/archives"

var nameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$`)

// CheckName checks a package argument: a Debian package name, optionally
// with "=version".
func CheckName(s string) error {
	if !nameRe.MatchString(s) {
		return fmt.Errorf("deb: %q is not a Debian package name (name or name=version)", s)
	}
	return nil
}

var instRe = regexp.MustCompile(`^Inst (\S+) (?:\[\S+\] )?\((\S+) .*\[([a-z0-9]+)\]\)`)

// Closure asks apt which packages installing names needs, as on an empty
// system: apt-get's own resolver (alternatives, virtual packages,
// Pre-Depends), simulated against an empty dpkg status so that nothing the
// host happens to have installed is left out, and without Recommends. It
// returns the packages with their versions, in apt's order.
func Closure(names []string) ([]Ref, error) {
	for _, n := range names {
		if err := CheckName(n); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "bulwark-apt-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	status := filepath.Join(dir, "status")
	if err := os.WriteFile(status, nil, 0o644); err != nil {
		return nil, err
	}
	args := []string{"-s", "-q", "-o", "Dir::State::status=" + status,
		"-o", "APT::Install-Recommends=false", "-o", "APT::Install-Suggests=false",
		"-o", "Debug::NoLocking=true", "install"}
	cmd := exec.Command("apt-get", append(args, names...)...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("deb: apt-get cannot resolve %s: %v\n%s(is the package in the host's apt sources? apt-get update refreshes them)",
			strings.Join(names, " "), err, lastLines(out, 8))
	}
	var refs []Ref
	for _, line := range strings.Split(string(out), "\n") {
		if m := instRe.FindStringSubmatch(line); m != nil {
			refs = append(refs, Ref{Name: m[1], Version: m[2], Arch: m[3]})
		}
	}
	if len(refs) == 0 {
		return nil, fmt.Errorf("deb: apt-get installs nothing for %s:\n%s", strings.Join(names, " "), lastLines(out, 8))
	}
	return refs, nil
}

// ClosureCached is Closure with its answer kept in dir, keyed by the
// names and by everything apt's answer depends on: the index files under
// /var/lib/apt/lists (name, size, time) and apt's configuration under
// /etc/apt (contents). apt-get takes about 4 s to resolve PostgreSQL's
// closure on an empty status; an apt-get update or a changed source or
// pin makes a new key. The versions are still checked against apt's index
// by Show, and each .deb against the digest there.
func ClosureCached(dir string, names []string) ([]Ref, error) {
	key, err := closureKey(names)
	if err != nil {
		return Closure(names)
	}
	file := filepath.Join(dir, "closure-"+key+".json")
	if b, err := os.ReadFile(file); err == nil {
		var refs []Ref
		if json.Unmarshal(b, &refs) == nil && len(refs) > 0 {
			return refs, nil
		}
	}
	refs, err := Closure(names)
	if err != nil {
		return nil, err
	}
	if b, err := json.Marshal(refs); err == nil && os.MkdirAll(dir, 0o755) == nil {
		tmp := file + ".tmp"
		if os.WriteFile(tmp, b, 0o644) == nil {
			os.Rename(tmp, file)
		}
	}
	return refs, nil
}

func closureKey(names []string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "bulwark apt closure v1\x00%s\x00", strings.Join(names, "\x00"))
	lists, err := os.ReadDir("/var/lib/apt/lists")
	if err != nil {
		return "", err
	}
	for _, e := range lists {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			fmt.Fprintf(h, "list %s %d %d\x00", e.Name(), info.Size(), info.ModTime().UnixNano())
		}
	}
	err = filepath.WalkDir("/etc/apt", func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		fmt.Fprintf(h, "conf %s %d\x00", p, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}

// Show reads apt's index records of exact versions (apt-cache show).
func Show(refs []Ref) (map[Ref]Record, error) {
	args := []string{"show", "--no-all-versions"}
	for _, r := range refs {
		args = append(args, r.String())
	}
	cmd := exec.Command("apt-cache", args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("deb: apt-cache show: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	recs := map[Ref]Record{}
	for _, para := range strings.Split(string(out), "\n\n") {
		f := fields(para)
		if f["Package"] == "" {
			continue
		}
		r := Record{Ref: Ref{Name: f["Package"], Version: f["Version"], Arch: f["Architecture"]},
			Filename: f["Filename"], SHA256: f["SHA256"], Depends: f["Depends"]}
		r.Size, _ = strconv.ParseInt(f["Size"], 10, 64)
		kib, _ := strconv.ParseInt(f["Installed-Size"], 10, 64)
		r.InstalledBytes = kib * 1024
		for _, want := range refs {
			if want.Name == r.Name && want.Version == r.Version && want.Arch == r.Arch {
				if _, dup := recs[want]; !dup {
					r.Ref = want
					recs[want] = r
				}
			}
		}
	}
	for _, want := range refs {
		rec, ok := recs[want]
		if !ok {
			return nil, fmt.Errorf("deb: apt has no record of %s", want)
		}
		if len(rec.SHA256) != 64 || rec.Filename == "" {
			return nil, fmt.Errorf("deb: apt's record of %s has no SHA256 or Filename", want)
		}
	}
	return recs, nil
}

// fields parses one control paragraph; continuation lines are appended.
func fields(para string) map[string]string {
	f := map[string]string{}
	var last string
	sc := bufio.NewScanner(strings.NewReader(para))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && last != "" {
			f[last] += "\n" + line
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = k
		f[k] = strings.TrimSpace(v)
	}
	return f
}

// Fetch makes sure every record's .deb is in cache with the digest apt's
// index gives, and returns their paths. A file is taken from the cache or
// the host's apt archive when its SHA-256 matches; the rest are fetched
// with one apt-get download, which checks them against the signed index
// too. A file with another digest is never used.
func Fetch(cache string, recs []Record) (map[Ref]string, error) {
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("deb: package cache: %w", err)
	}
	out := map[Ref]string{}
	var missing []Record
	for _, r := range recs {
		base := filepath.Base(r.Filename)
		found := ""
		for _, dir := range []string{cache, HostArchive} {
			for _, name := range []string{base, archiveName(r)} {
				p := filepath.Join(dir, name)
				if ok, _ := hasDigest(p, r.SHA256); ok {
					found = p
					break
				}
			}
			if found != "" {
				break
			}
		}
		if found != "" {
			out[r.Ref] = found
		} else {
			missing = append(missing, r)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	tmp, err := os.MkdirTemp(cache, ".download-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	args := []string{"download", "-q", "-o", "APT::Sandbox::User=root"}
	for _, r := range missing {
		args = append(args, r.String())
	}
	cmd := exec.Command("apt-get", args...)
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("deb: apt-get download: %v\n%s", err, lastLines(b, 8))
	}
	got, _ := os.ReadDir(tmp)
	for _, r := range missing {
		var match string
		for _, e := range got {
			p := filepath.Join(tmp, e.Name())
			if ok, _ := hasDigest(p, r.SHA256); ok {
				match = p
				break
			}
		}
		if match == "" {
			return nil, fmt.Errorf("deb: apt-get download gave no file with the digest apt's index has for %s (sha256 %s)", r.Ref, r.SHA256)
		}
		dst := filepath.Join(cache, filepath.Base(r.Filename))
		if err := os.Rename(match, dst); err != nil {
			return nil, err
		}
		out[r.Ref] = dst
	}
	return out, nil
}

// archiveName is the name apt gives a .deb in its archive directory: the
// epoch's colon is written %3a.
func archiveName(r Record) string {
	return fmt.Sprintf("%s_%s_%s.deb", r.Name, strings.ReplaceAll(r.Version, ":", "%3a"), r.Arch)
}

func hasDigest(p, want string) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	return hex.EncodeToString(h.Sum(nil)) == want, nil
}

// SortRefs sorts references by name, then version.
func SortRefs(refs []Ref) {
	slices.SortFunc(refs, func(a, b Ref) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Version, b.Version)
	})
}
