package ipsec

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// ExporterLabel is the TLS exporter label (RFC 8446 section 7.5) of
// bulwark's ESP keys.
const ExporterLabel = "EXPORTER-bulwark-ipsec-esp-v1"

// message is one line of the keying protocol.
type message struct {
	Type string `json:"type"`           // "hello", "ready", "request"
	Boot string `json:"boot,omitempty"` // the sender's boot id
	Gen  uint64 `json:"gen,omitempty"`  // the key generation
	SPI  uint32 `json:"spi,omitempty"`  // the SPI the sender allocated for its inbound SA
	Err  string `json:"err,omitempty"`
	// Force (in a request): a new generation even though the sender's
	// boot has SAs with the receiver (it lost its half of them).
	Force bool `json:"force,omitempty"`
}

type wire struct {
	c   *tls.Conn
	r   *bufio.Reader
	enc *json.Encoder
}

func newWire(c *tls.Conn) *wire {
	return &wire{c: c, r: bufio.NewReader(c), enc: json.NewEncoder(c)}
}

func (w *wire) send(m message) error { return w.enc.Encode(m) }

func (w *wire) recv(want string) (message, error) {
	line, err := w.r.ReadBytes('\n')
	if err != nil {
		return message{}, err
	}
	var m message
	if err := json.Unmarshal(line, &m); err != nil {
		return m, fmt.Errorf("keying: bad message: %w", err)
	}
	if m.Type == "error" {
		return m, fmt.Errorf("keying: the peer says: %s", m.Err)
	}
	if want != "" && m.Type != want {
		return m, fmt.Errorf("keying: got %q, want %q", m.Type, want)
	}
	return m, nil
}

// keys derives the two directions' ESP key material from the TLS session.
// The context binds the initiator's and responder's addresses, both SPIs
// and the generation, so that keys cannot be moved to another pair of
// SAs. It returns initiator->responder and responder->initiator keys.
func keys(cs tls.ConnectionState, initiator, responder netip.Addr, spiI, spiR uint32, gen uint64) ([]byte, []byte, error) {
	var ctx []byte
	ctx = append(ctx, "bulwark-ipsec-v1"...)
	a, b := initiator.As16(), responder.As16()
	ctx = append(ctx, a[:]...)
	ctx = append(ctx, b[:]...)
	ctx = binary.BigEndian.AppendUint32(ctx, spiI)
	ctx = binary.BigEndian.AppendUint32(ctx, spiR)
	ctx = binary.BigEndian.AppendUint64(ctx, gen)
	m, err := cs.ExportKeyingMaterial(ExporterLabel, ctx, 2*aeadKeyLen)
	if err != nil {
		return nil, nil, fmt.Errorf("keying: TLS exporter: %w", err)
	}
	return m[:aeadKeyLen], m[aeadKeyLen:], nil
}

// remoteAddr is the address a connection comes from.
func remoteAddr(c net.Conn) netip.Addr {
	if t, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return t.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func deadline(c net.Conn) { c.SetDeadline(time.Now().Add(20 * time.Second)) }
