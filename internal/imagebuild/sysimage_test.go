package imagebuild

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"

	"github.com/bulwarkvm/bulwark/internal/efidisk"
	"github.com/bulwarkvm/bulwark/internal/verity"
)

var defaultBuild struct {
	once sync.Once
	dir  string
	rep  *Report
	err  error
}

// built returns the default image (with the default packages' system
// image), built once for the tests of this file.
func built(t *testing.T) (string, *Report) {
	t.Helper()
	defaultBuild.once.Do(func() {
		src, err := FindSourceDir()
		if err != nil {
			defaultBuild.err = err
			return
		}
		dir, err := os.MkdirTemp("", "bulwark-imagebuild-")
		if err != nil {
			defaultBuild.err = err
			return
		}
		defaultBuild.dir = dir
		defaultBuild.rep, defaultBuild.err = Build(context.Background(), Options{OutDir: dir, SourceDir: src})
	})
	if defaultBuild.err != nil {
		t.Fatal(defaultBuild.err)
	}
	return defaultBuild.dir, defaultBuild.rep
}

func TestMain(m *testing.M) {
	code := m.Run()
	if defaultBuild.dir != "" {
		os.RemoveAll(defaultBuild.dir)
	}
	os.Exit(code)
}

// TestSystemImageVeritysetup: veritysetup verify accepts out/system.img
// with the report's root hash and hash offset, as docs/image.md tells an
// operator to run it; one flipped bit in the data or the hash area makes
// it fail; veritysetup format over the same data with our salt writes the
// same hash area and the same root hash.
func TestSystemImageVeritysetup(t *testing.T) {
	dir, rep := built(t)
	si := rep.SystemImage
	img := filepath.Join(dir, SystemImageFile)
	off := fmt.Sprint(si.HashOffset)
	if out, err := exec.Command("veritysetup", "verify", img, img, si.RootHash, "--hash-offset="+off).CombinedOutput(); err != nil {
		t.Fatalf("veritysetup verify refused our system image: %v\n%s", err, out)
	}
	orig, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(orig)) != si.HashOffset+si.HashBytes || si.DataBytes != si.HashOffset {
		t.Fatalf("system.img is %d bytes; report: data %d, hash area %d at %d", len(orig), si.DataBytes, si.HashBytes, si.HashOffset)
	}
	for _, c := range []struct {
		name string
		off  int64
	}{
		{"data area", si.DataBytes / 3},
		{"hash area", si.HashOffset + 3*verity.BlockSize + 100},
	} {
		flipped := filepath.Join(t.TempDir(), "flipped.img")
		b := bytes.Clone(orig)
		b[c.off] ^= 0x01
		if err := os.WriteFile(flipped, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("veritysetup", "verify", flipped, flipped, si.RootHash, "--hash-offset="+off).CombinedOutput(); err == nil {
			t.Errorf("veritysetup verify accepted a flipped bit in the %s:\n%s", c.name, out)
		}
	}
	theirs := filepath.Join(t.TempDir(), "theirs.img")
	if err := os.WriteFile(theirs, orig[:si.DataBytes], 0o600); err != nil {
		t.Fatal(err)
	}
	sb, err := verity.ParseSuperblock(orig[si.HashOffset:])
	if err != nil {
		t.Fatal(err)
	}
	u := hex.EncodeToString(sb.UUID[:])
	out, err := exec.Command("veritysetup", "format", theirs, theirs, "--hash-offset="+off, "--format=1", "--hash=sha256",
		"--data-block-size=4096", "--hash-block-size=4096", "--salt="+si.Salt,
		"--uuid="+u[0:8]+"-"+u[8:12]+"-"+u[12:16]+"-"+u[16:20]+"-"+u[20:]).CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup format: %v\n%s", err, out)
	}
	if m := regexp.MustCompile(`Root hash:\s+([0-9a-f]{64})`).FindSubmatch(out); m == nil || string(m[1]) != si.RootHash {
		t.Errorf("veritysetup format gives another root hash than ours (%s):\n%s", si.RootHash, out)
	}
	if tb, _ := os.ReadFile(theirs); !bytes.Equal(tb, orig) {
		t.Error("veritysetup format wrote another hash area than ours")
	}
}

// TestSystemImageRuns unpacks the built initramfs, mounts the system
// image's squashfs on its /usr with the host's kernel (as the node's usr
// stage does, without dm-verity, which the host lacks), and runs the
// database's programs from it in a chroot as an unprivileged user: their
// loader (through the initramfs's /lib64 link) and every library come
// from the image.
func TestSystemImageRuns(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("needs root to mount the image and chroot; make test runs it as root")
	}
	dir, rep := built(t)
	root := t.TempDir()
	unpackInitramfs(t, filepath.Join(dir, "initramfs.img"), root)
	mnt := filepath.Join(root, "usr")
	if out, err := exec.Command("mount", "-t", "squashfs", "-o", "loop,ro,nodev,nosuid", filepath.Join(dir, SystemImageFile), mnt).CombinedOutput(); err != nil {
		t.Fatalf("mounting the system image: %v\n%s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	if _, err := os.Stat(filepath.Join(root, "usr/sbin/mke2fs")); err == nil {
		t.Error("the initramfs's /usr shows through the system image")
	}
	for _, prog := range []string{"postgres", "initdb", "pg_ctl"} {
		out, err := exec.Command("chroot", "--userspec=65534:65534", root, "/usr/lib/postgresql/15/bin/"+prog, "--version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), prog+" (PostgreSQL) 15.") {
			t.Errorf("%s --version from the system image: %v\n%s", prog, err, out)
		}
	}
	if rep.SystemImage.MountPoint != "/usr" {
		t.Errorf("mount point %s", rep.SystemImage.MountPoint)
	}
}

// unpackInitramfs writes the directories, files and links of an
// initramfs (LZ4 legacy frame, newc cpio) under root.
func unpackInitramfs(t *testing.T, img, root string) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("lz4", "-d", "-c")
	cmd.Stdin = f
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("lz4 -d: %v", err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		p := filepath.Join(root, r.Name)
		var content []byte
		if r.ReaderAt != nil {
			content, _ = io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		}
		switch r.Mode & cpio.S_IFMT {
		case cpio.S_IFDIR:
			err = os.MkdirAll(p, 0o755)
		case cpio.S_IFLNK:
			os.MkdirAll(filepath.Dir(p), 0o755)
			err = os.Symlink(string(content), p)
		case cpio.S_IFREG:
			os.MkdirAll(filepath.Dir(p), 0o755)
			err = os.WriteFile(p, content, fs.FileMode(r.Mode&0o7777))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestSystemImageContents: the image holds the requested packages' files
// and the libraries they need, and none of what the drop rules name.
func TestSystemImageContents(t *testing.T) {
	dir, rep := built(t)
	out, err := exec.Command("unsquashfs", "-lls", filepath.Join(dir, SystemImageFile)).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs: %v\n%s", err, out)
	}
	list := string(out)
	for _, want := range []string{
		"squashfs-root/lib/postgresql/15/bin/postgres",
		"squashfs-root/lib/postgresql/15/lib/pgaudit.so",
		"squashfs-root/share/postgresql/15/extension/pgaudit.control",
		"squashfs-root/lib/x86_64-linux-gnu/libc.so.6",
		"squashfs-root/lib64/ld-linux-x86-64.so.2 -> /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		"squashfs-root/lib/x86_64-linux-gnu/libssl.so.3",
		"squashfs-root/lib/locale/C.utf8/LC_CTYPE",
	} {
		if !strings.Contains(list, want) {
			t.Errorf("the system image lacks %s", want)
		}
	}
	for _, bad := range []string{"/share/doc/", "/share/man/", "/share/locale/", "llvmjit", "/bitcode/", "libLLVM", "perl", "/etc/"} {
		if strings.Contains(list, bad) {
			t.Errorf("the system image holds %s", bad)
		}
	}
	for _, line := range strings.Split(list, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[1] != "root/root" {
			t.Errorf("not owned by root: %s", line)
		}
		if strings.Contains(line, "squashfs-root") && !strings.Contains(line, " 2020-01-01 00:00 ") {
			t.Errorf("not stamped with SOURCE_DATE_EPOCH's default: %s", line)
		}
	}
	si := rep.SystemImage
	roles := map[string]string{}
	for _, p := range si.Packages {
		roles[p.Name] = p.Role
		if p.Version == "" || len(p.DebSHA256) != 64 || p.InstalledBytes == 0 || p.Files == 0 {
			t.Errorf("package %+v is not fully described", p)
		}
	}
	if roles["postgresql-15"] != "requested" || roles["postgresql-15-pgaudit"] != "requested" || roles["libc6"] != "libraries" || roles["libc-bin"] != "libraries" {
		t.Errorf("package roles: %v", roles)
	}
	if _, ok := roles["libllvm14"]; ok {
		t.Error("the LLVM library is in the image though the JIT is not")
	}
	if si.Dropped["LLVM JIT"].Files == 0 || si.Dropped["documentation"].Files == 0 {
		t.Errorf("dropped: %v", si.Dropped)
	}
	if si.DataBytes >= si.DebianInstalledBytes/4 {
		t.Errorf("the image (%d bytes) is not much smaller than Debian's install (%d)", si.DataBytes, si.DebianInstalledBytes)
	}
}

// TestUEFIDiskSystemPartitions: the UEFI disk carries the system image as
// the Discoverable Partitions Specification's usr and usr-verity
// partitions, with UUIDs from the root hash, the same bytes as
// system.img, and the loader entry binds the root hash.
func TestUEFIDiskSystemPartitions(t *testing.T) {
	dir, rep := built(t)
	si := rep.SystemImage
	disk := filepath.Join(dir, "bulwark.img")
	d, err := diskfs.Open(disk, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	table, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	parts := table.(*gpt.Table).Partitions
	if len(parts) < 3 {
		t.Fatalf("%d partitions", len(parts))
	}
	root, _ := hex.DecodeString(si.RootHash)
	dataUUID, hashUUID := efidisk.UsrPartitionUUIDs(root)
	img, err := os.ReadFile(filepath.Join(dir, SystemImageFile))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for i, want := range []struct {
		typ, uuid string
		content   []byte
	}{
		{efidisk.UsrPartitionType, dataUUID, img[:si.DataBytes]},
		{efidisk.UsrVerityPartitionType, hashUUID, img[si.HashOffset:]},
	} {
		p := parts[i+1]
		if !strings.EqualFold(string(p.Type), want.typ) || !strings.EqualFold(p.GUID, want.uuid) {
			t.Errorf("partition %d: type %s uuid %s, want %s %s", i+2, p.Type, p.GUID, want.typ, want.uuid)
		}
		got := make([]byte, len(want.content))
		if _, err := raw.ReadAt(got, int64(p.Start)*512); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.content) {
			t.Errorf("partition %d does not hold the system image's bytes", i+2)
		}
	}
	// The loader entry on the EFI system partition.
	esp := parts[0]
	cmd := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", disk, esp.Start*512), "::/loader/entries/bulwark.conf")
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mtype: %v\n%s", err, out)
	}
	// Both boots bind the image: the loader entry and the direct
	// kernel boot's command line (the report's, and out/cmdline) end
	// with its root hash.
	if want := "options " + rep.Cmdline + "\n"; !strings.Contains(string(out), want) {
		t.Errorf("loader entry:\n%s\nwant the line %q", out, want)
	}
	if !strings.HasSuffix(rep.Cmdline, " "+si.Cmdline) {
		t.Errorf("the report's command line %q does not end with %q", rep.Cmdline, si.Cmdline)
	}
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(disk), CmdlineFile)); err != nil || string(b) != rep.Cmdline+"\n" {
		t.Errorf("%s: %q, %v; want the report's command line", CmdlineFile, b, err)
	}
}

func TestNodePath(t *testing.T) {
	for in, want := range map[string]string{
		"./usr/lib/postgresql/15/bin/postgres": "/usr/lib/postgresql/15/bin/postgres",
		"./lib/x86_64-linux-gnu/libc.so.6":     "/usr/lib/x86_64-linux-gnu/libc.so.6",
		"./lib64/ld-linux-x86-64.so.2":         "/usr/lib64/ld-linux-x86-64.so.2",
		"./bin/sh":                             "/usr/bin/sh",
		"./sbin/ldconfig":                      "/usr/sbin/ldconfig",
		"./usr/":                               "/usr",
		"./usr/../lib/x":                       "/usr/lib/x",
	} {
		if got, ok := nodePath(in); !ok || got != want {
			t.Errorf("%s: %s %v, want %s", in, got, ok, want)
		}
	}
	for _, out := range []string{"./etc/postgresql-common/pg_upgradecluster.d", "./var/lib/postgresql", "./", "./libexec/x"} {
		if p, ok := nodePath(out); ok {
			t.Errorf("%s is taken as %s", out, p)
		}
	}
	if got := canonicalTarget("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"); got != "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" {
		t.Errorf("canonicalTarget: %s", got)
	}
	if got := canonicalTarget("/etc/ssl/openssl.cnf"); got != "/etc/ssl/openssl.cnf" {
		t.Errorf("canonicalTarget: %s", got)
	}
}

func TestDropReason(t *testing.T) {
	for p, want := range map[string]string{
		"/usr/share/doc/libc6/copyright":                       "documentation",
		"/usr/share/man/man1/psql.1.gz":                        "man pages",
		"/usr/share/postgresql/15/man/man1/postgres.1.gz":      "man pages",
		"/usr/share/locale/de/LC_MESSAGES/postgres-15.mo":      "locales other than C.UTF-8",
		"/usr/lib/locale/de_DE.utf8/LC_CTYPE":                  "locales other than C.UTF-8",
		"/usr/lib/locale/C.utf8/LC_CTYPE":                      "",
		"/usr/lib/postgresql/15/lib/llvmjit.so":                "LLVM JIT",
		"/usr/lib/postgresql/15/lib/llvmjit_types.bc":          "LLVM JIT",
		"/usr/lib/postgresql/15/lib/bitcode/postgres/main.bc":  "LLVM JIT",
		"/usr/lib/postgresql/15/lib/pgaudit.so":                "",
		"/usr/share/postgresql/15/extension/pgaudit.control":   "",
		"/usr/share/postgresql/15/timezonesets/Default":        "",
		"/usr/lib/x86_64-linux-gnu/libicudata.so.72.1":         "",
		"/usr/share/postgresql-common/pg_wrapper":              "",
		"/usr/share/locale-langpack-not-a-locale-dir/whatever": "",
	} {
		if got := dropReason(p); got != want {
			t.Errorf("%s: %q, want %q", p, got, want)
		}
	}
}

// TestSysTreeResolve: links are followed in the tree as on the node (a
// relative link, an absolute one into a merged directory, a link in a
// parent directory), the chain names every link on the way, and a loop
// ends.
func TestSysTreeResolve(t *testing.T) {
	tr := newSysTree()
	put := func(p string, e *sysEntry) {
		if err := tr.put(p, e); err != nil {
			t.Fatal(err)
		}
	}
	put("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", &sysEntry{mode: 0o755, data: []byte("ld")})
	put("/usr/lib64/ld-linux-x86-64.so.2", &sysEntry{mode: fs.ModeSymlink, link: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"})
	put("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", &sysEntry{mode: 0o644, data: []byte("z")})
	put("/usr/lib/x86_64-linux-gnu/libz.so.1", &sysEntry{mode: fs.ModeSymlink, link: "libz.so.1.2.13"})
	put("/usr/lib/alias", &sysEntry{mode: fs.ModeSymlink, link: "x86_64-linux-gnu"})
	put("/usr/lib/loop", &sysEntry{mode: fs.ModeSymlink, link: "loop"})
	for p, want := range map[string]string{
		"/lib64/ld-linux-x86-64.so.2":         "ld",
		"/lib/x86_64-linux-gnu/libz.so.1":     "z",
		"/usr/lib/alias/libz.so.1":            "z",
		"/usr/lib/x86_64-linux-gnu/libz.so.1": "z",
	} {
		f, err := tr.Open(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		b, _ := io.ReadAll(io.NewSectionReader(f, 0, 10))
		if string(b) != want {
			t.Errorf("%s: %q", p, b)
		}
	}
	chain, err := tr.chain("/usr/lib/alias/libz.so.1")
	if err != nil || strings.Join(chain, " ") != "/usr/lib/alias /usr/lib/x86_64-linux-gnu/libz.so.1 /usr/lib/x86_64-linux-gnu/libz.so.1.2.13" {
		t.Errorf("chain: %v %v", chain, err)
	}
	if _, err := tr.Open("/usr/lib/loop/x"); err == nil || !strings.Contains(err.Error(), "too many levels") {
		t.Errorf("a link loop: %v", err)
	}
	if _, err := tr.Open("/etc/passwd"); err == nil {
		t.Error("a path outside /usr opened")
	}
	// Two packages with different files at one path.
	if err := tr.put("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", &sysEntry{mode: 0o644, data: []byte("other"), pkg: "b"}); err == nil {
		t.Error("a conflicting file was accepted")
	}
}

// TestFileExtent: FileExtent finds the first data block of a program in
// the system image: decompressed, it is the program's first bytes as
// unsquashfs reads them, and one byte flipped inside it changes what the
// file reads as (or makes it unreadable), and nothing else.
func TestFileExtent(t *testing.T) {
	dir, rep := built(t)
	img := filepath.Join(dir, SystemImageFile)
	const prog = "lib/postgresql/15/bin/postgres"
	off, n, err := FileExtent(img, prog)
	if err != nil {
		t.Fatal(err)
	}
	if off <= 0 || n <= 0 || off+n > rep.SystemImage.DataBytes {
		t.Fatalf("extent %d+%d is outside the data area (%d bytes)", off, n, rep.SystemImage.DataBytes)
	}
	want, err := exec.Command("unsquashfs", "-cat", img, prog).Output()
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, n)
	f, _ := os.Open(img)
	f.ReadAt(raw, off)
	f.Close()
	d, _ := zstd.NewReader(nil)
	got, err := d.DecodeAll(raw, nil)
	d.Close()
	if err != nil {
		t.Fatalf("the extent does not decompress: %v", err)
	}
	if len(got) != squashfsBlock || !bytes.Equal(got, want[:squashfsBlock]) {
		t.Fatalf("the extent holds %d bytes that are not the program's first block", len(got))
	}
	if _, _, err := FileExtent(img, "lib/postgresql/15/bin/nosuch"); err == nil {
		t.Error("a file that does not exist was found")
	}
	if _, _, err := FileExtent(img, "lib/postgresql/15/bin"); err == nil {
		t.Error("a directory was taken for a file")
	}
	b, _ := os.ReadFile(img)
	b[off+n/2] ^= 0xff
	damaged := filepath.Join(t.TempDir(), "damaged.img")
	os.WriteFile(damaged, b, 0o600)
	if out, err := exec.Command("unsquashfs", "-cat", damaged, prog).Output(); err == nil && bytes.Equal(out, want) {
		t.Error("the flipped byte is not in the program")
	}
	if out, err := exec.Command("unsquashfs", "-cat", damaged, "lib/postgresql/15/bin/initdb").Output(); err != nil || len(out) == 0 {
		t.Errorf("another program was damaged too: %v", err)
	}
}

// TestSystemFilesMode: the build's own files get a fixed mode in the
// image (0755 for a program, 0644 for data) whatever the build host's
// umask made of them, so that every builder makes the same image and an
// unprivileged process can run its programs.
func TestSystemFilesMode(t *testing.T) {
	dir := t.TempDir()
	prog, data := filepath.Join(dir, "prog"), filepath.Join(dir, "data")
	os.WriteFile(prog, []byte("p"), 0o700)
	os.WriteFile(data, []byte("d"), 0o600)
	os.Chmod(prog, 0o700) // the umask may have taken more
	os.Chmod(data, 0o600)
	root := newSysTree()
	si := &SystemImage{}
	if err := addSystemFiles(si, root, map[string]string{"/usr/libexec/x/prog": prog, "/usr/share/x/data": data}); err != nil {
		t.Fatal(err)
	}
	if m := root.m["/usr/libexec/x/prog"].mode; m != 0o755 {
		t.Errorf("a program of mode 0700: %v in the image, want 0755", m)
	}
	if m := root.m["/usr/share/x/data"].mode; m != 0o644 {
		t.Errorf("data of mode 0600: %v in the image, want 0644", m)
	}
	if len(si.Extra) != 2 {
		t.Errorf("extra files: %+v", si.Extra)
	}
	for _, bad := range []string{"/etc/x", "/usr/../etc/x", "usr/x"} {
		if err := addSystemFiles(&SystemImage{}, newSysTree(), map[string]string{bad: data}); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}
