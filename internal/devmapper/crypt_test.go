package devmapper

import (
	"encoding/binary"
	"strings"
	"testing"
)

func TestCryptParams(t *testing.T) {
	c := Crypt{Cipher: "aes-xts-plain64", KeySize: 64, KeyDesc: "bulwark:u-d0", Device: "/dev/vdb", Offset: 32768, SectorSize: 4096}
	if got, want := c.Params(), "aes-xts-plain64 :64:logon:bulwark:u-d0 0 /dev/vdb 32768 1 sector_size:4096"; got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	c.AllowDiscards, c.SectorSize = true, 512
	if got, want := c.Params(), "aes-xts-plain64 :64:logon:bulwark:u-d0 0 /dev/vdb 32768 1 allow_discards"; got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}

func TestCryptCheck(t *testing.T) {
	good := Crypt{Cipher: "aes-xts-plain64", KeySize: 64, KeyDesc: "bulwark:x", Device: "/dev/vdb", SectorSize: 4096}
	for _, c := range []struct {
		edit func(*Crypt)
		want string
	}{
		{func(c *Crypt) { c.KeyDesc = "nocolon" }, "prefix"},
		{func(c *Crypt) { c.Device = "vdb" }, "device"},
		{func(c *Crypt) { c.SectorSize = 3000 }, "sector size"},
		{func(c *Crypt) { c.Cipher = "aes xts" }, "cipher"},
	} {
		cr := good
		c.edit(&cr)
		if err := cr.check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want %q", err, c.want)
		}
	}
	if err := good.check(); err != nil {
		t.Fatal(err)
	}
}

func TestIoctlNumbers(t *testing.T) {
	// From linux/dm-ioctl.h: DM_VERSION is 0xc138fd00, DM_TABLE_STATUS
	// 0xc138fd0c.
	if ioctlNumber(cmdVersion) != 0xc138fd00 || ioctlNumber(cmdTableStatus) != 0xc138fd0c {
		t.Fatalf("%#x %#x", ioctlNumber(cmdVersion), ioctlNumber(cmdTableStatus))
	}
}

func TestABISizes(t *testing.T) {
	if n := binary.Size(header{}); n != ioctlHeaderSize {
		t.Fatalf("struct dm_ioctl is %d bytes here, %d in the kernel", n, ioctlHeaderSize)
	}
	if n := binary.Size(targetSpec{}); n != targetSpecSize {
		t.Fatalf("struct dm_target_spec is %d bytes here, %d in the kernel", n, targetSpecSize)
	}
}
