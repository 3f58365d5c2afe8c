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

func TestVerityParams(t *testing.T) {
	v := Verity{DataDevice: "/dev/vdb", HashDevice: "/dev/vdb", BlockSize: 4096, DataBlocks: 300, HashStart: 301,
		Algorithm: "sha256", RootHash: []byte{0xab, 0xcd}, Salt: []byte{0x01, 0x02}}
	if got, want := v.Params(), "1 /dev/vdb /dev/vdb 4096 4096 300 301 sha256 abcd 0102"; got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	v.Salt, v.Options = nil, []string{"panic_on_corruption"}
	if got, want := v.Params(), "1 /dev/vdb /dev/vdb 4096 4096 300 301 sha256 abcd - 1 panic_on_corruption"; got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	if v.Sectors() != 300*8 {
		t.Fatalf("%d sectors", v.Sectors())
	}
	for _, c := range []struct {
		edit func(*Verity)
		want string
	}{
		{func(v *Verity) { v.DataDevice = "vdb" }, "data device"},
		{func(v *Verity) { v.BlockSize = 3000 }, "block size"},
		{func(v *Verity) { v.DataBlocks = 0 }, "no data blocks"},
		{func(v *Verity) { v.RootHash = nil }, "no root hash"},
		{func(v *Verity) { v.Options = []string{"a b"} }, "option"},
	} {
		w := v
		c.edit(&w)
		if err := w.check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want %q", err, c.want)
		}
	}
}
