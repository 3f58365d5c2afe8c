package powerbutton

import (
	"encoding/binary"
	"testing"
)

func event(typ, code uint16, value int32) []byte {
	b := make([]byte, eventSize)
	binary.LittleEndian.PutUint16(b[16:], typ)
	binary.LittleEndian.PutUint16(b[18:], code)
	binary.LittleEndian.PutUint32(b[20:], uint32(value))
	return b
}

func TestIsPress(t *testing.T) {
	cases := []struct {
		ev   []byte
		want bool
	}{
		{event(evKey, keyPower, 1), true},
		{event(evKey, keyPower, 0), false}, // release
		{event(evKey, keyPower, 2), false}, // autorepeat
		{event(evKey, 115, 1), false},      // another key
		{event(0, 0, 0), false},            // EV_SYN
		{event(evKey, keyPower, 1)[:20], false},
	}
	for i, c := range cases {
		if got := IsPress(c.ev); got != c.want {
			t.Errorf("case %d: IsPress = %v, want %v", i, got, c.want)
		}
	}
}

func TestNoButton(t *testing.T) {
	if _, err := Watch(t.TempDir(), t.TempDir(), make(chan struct{})); err == nil {
		t.Fatal("Watch found a power button in an empty sysfs")
	}
}
