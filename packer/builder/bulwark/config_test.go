package bulwark

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestPrepare: good values pass; each bad value fails naming its field.
func TestPrepare(t *testing.T) {
	src, _ := filepath.Abs("../../..")
	good := func() map[string]interface{} {
		return map[string]interface{}{"output_directory": filepath.Join(t.TempDir(), "out"), "source_dir": src}
	}
	var c Config
	if _, err := c.Prepare(good()); err != nil {
		t.Fatal(err)
	}
	if c.DiskSizeMiB != 128 || len(c.Formats) != 1 || c.opts.KernelVersion == "" {
		t.Fatalf("defaults: %+v", c)
	}
	for _, tc := range []struct {
		field string
		value interface{}
		want  string
	}{
		{"disk_size_mib", 10, "disk_size_mib: 10 is out of range"},
		{"formats", []string{"raw", "vhd"}, `formats[1]: "vhd" is not raw or qcow2`},
		{"extra_modules", []string{"Bad Name"}, `extra_modules[0]: "Bad Name" is not a kernel module name`},
		{"extra_modules", []string{"nosuchmodule"}, `extra_modules: kmod: kernel`},
		{"extra_tools", []string{"/nonexistent/tool"}, "extra_tools[0]: /nonexistent/tool is not a file"},
		{"extra_files", map[string]string{"etc/x": "/etc/hostname"}, `extra_files: destination "etc/x"`},
		{"extra_files", map[string]string{"/etc/x": "/nonexistent"}, "extra_files: source /nonexistent"},
		{"kernel_path", "/nonexistent/vmlinuz", "kernel_path: /nonexistent/vmlinuz is not a file"},
		{"kernel_version", "9.9.9-1-amd64", "kernel_version:"},
		{"root", "/nonexistent", "root: /nonexistent has no lib/modules"},
		{"cmdline_extra", "a\nb", "cmdline_extra: may not contain line breaks"},
		{"source_dir", "/tmp", "source_dir: /tmp does not hold"},
		{"packages", []string{"postgresql-15", "x; rm -rf /"}, `packages[1]: deb: "x; rm -rf /" is not a Debian package name`},
	} {
		raw := good()
		raw[tc.field] = tc.value
		var c Config
		if _, err := c.Prepare(raw); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s=%v: %v, want %q", tc.field, tc.value, err, tc.want)
		}
	}
	// The system image's packages reach the build; the default is the
	// build's own.
	if strings.Join(c.opts.Packages, ",") != "postgresql-15,postgresql-15-pgaudit" || c.opts.NoPackages {
		t.Errorf("default packages: %q", c.opts.Packages)
	}
	raw := good()
	raw["packages"] = []string{"postgresql-15", "postgresql-15-pgaudit", "postgresql-15-repack"}
	c = Config{}
	if _, err := c.Prepare(raw); err != nil || len(c.opts.Packages) != 3 {
		t.Errorf("packages: %q, %v", c.opts.Packages, err)
	}
	raw["no_packages"] = true
	if _, err := new(Config).Prepare(raw); err == nil || !strings.Contains(err.Error(), "packages: given with no_packages") {
		t.Errorf("packages with no_packages: %v", err)
	}
	delete(raw, "packages")
	c = Config{}
	if _, err := c.Prepare(raw); err != nil || !c.opts.NoPackages {
		t.Errorf("no_packages: %+v, %v", c.opts, err)
	}
	// An existing output directory needs -force.
	raw = good()
	raw["output_directory"] = t.TempDir()
	if _, err := new(Config).Prepare(raw); err == nil || !strings.Contains(err.Error(), "output_directory:") {
		t.Errorf("existing output directory: %v", err)
	}
	raw["packer_force"] = true
	if _, err := new(Config).Prepare(raw); err != nil {
		t.Errorf("existing output directory with -force: %v", err)
	}
}
