package ipsec

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/bulwarkvm/bulwark/internal/secret"
)

// installState installs (or completes) one SA. key is aeadKeyLen bytes.
//
// The request is built and sent here rather than through the netlink
// library, whose request serialiser copies every attribute, the key
// among them, into fresh heap buffers that nobody can clear. Here the
// whole message lives in one locked buffer that is zeroed as soon as the
// kernel has it, and the socket asks for acknowledgements without the
// request echoed back (NETLINK_CAP_ACK), so the key is in no reply either.
func installState(src, dst netip.Addr, spi uint32, key []byte, reqid int) error {
	if len(key) != aeadKeyLen {
		return fmt.Errorf("ipsec: SA key of %d bytes, want %d", len(key), aeadKeyLen)
	}
	// Update completes the larval state of an SPI this kernel allocated
	// (inbound); an outbound SA's SPI was allocated by the peer, so it is
	// new here.
	errUpd := sendSA(nl.XFRM_MSG_UPDSA, src, dst, spi, key, reqid)
	if errUpd == nil {
		return nil
	}
	if errAdd := sendSA(nl.XFRM_MSG_NEWSA, src, dst, spi, key, reqid); errAdd != nil {
		return fmt.Errorf("ipsec: installing SA %s -> %s spi %#x: %v / %w", src, dst, spi, errUpd, errAdd)
	}
	return nil
}

var saSeq atomic.Uint32

// Sizes of the message parts (linux/xfrm.h, linux/netlink.h).
const (
	nlmsgHdrLen = unix.SizeofNlMsghdr // 16
	rtaHdrLen   = 4
	aeadAttrLen = rtaHdrLen + nl.SizeofXfrmAlgoAEAD + aeadKeyLen
	esnAttrLen  = rtaHdrLen + nl.SizeofXfrmReplayStateEsn
	// netlinkCapAck is NETLINK_CAP_ACK: error replies carry the request's
	// header only, not the whole request.
	netlinkCapAck = 10
)

func align4(n int) int { return (n + 3) &^ 3 }

// saMessage writes the XFRM_MSG_NEWSA/UPDSA request for one transport-mode
// ESP SA with AES-GCM and extended sequence numbers into b, which must be
// saMessageLen bytes, and returns it. It is the request the netlink
// library would make for the same XfrmState.
func saMessage(b []byte, msgType uint16, seq uint32, src, dst netip.Addr, spi uint32, key []byte, reqid int) []byte {
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], msgType)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(b[8:], seq)
	ne.PutUint32(b[12:], 0)

	info := nl.XfrmUsersaInfo{
		Family: unix.AF_INET,
		Mode:   0, // transport
		Reqid:  uint32(reqid),
		Flags:  nl.XFRM_STATE_ESN, // with ESN the window is in the ESN attribute
	}
	if dst.Is6() {
		info.Family = unix.AF_INET6
	}
	info.Id.Daddr.FromIP(dst.AsSlice())
	info.Saddr.FromIP(src.AsSlice())
	info.Id.Proto = unix.IPPROTO_ESP
	info.Id.Spi = nl.Swap32(spi)
	info.Lft.SoftByteLimit = nl.XFRM_INF
	info.Lft.HardByteLimit = nl.XFRM_INF
	info.Lft.SoftPacketLimit = nl.XFRM_INF
	info.Lft.HardPacketLimit = nl.XFRM_INF
	off := nlmsgHdrLen
	off += copy(b[off:], info.Serialize())

	// XFRMA_ALG_AEAD: struct xfrm_algo_aead { char alg_name[64];
	// u32 alg_key_len (bits); u32 alg_icv_len (bits); char alg_key[]; }
	ne.PutUint16(b[off:], uint16(aeadAttrLen))
	ne.PutUint16(b[off+2:], nl.XFRMA_ALG_AEAD)
	a := b[off+rtaHdrLen:]
	copy(a[:64], aeadName)
	ne.PutUint32(a[64:], uint32(8*len(key)))
	ne.PutUint32(a[68:], icvBits)
	copy(a[72:], key)
	off += align4(aeadAttrLen)

	// XFRMA_REPLAY_ESN_VAL: struct xfrm_replay_state_esn { bmp_len, oseq,
	// seq, oseq_hi, seq_hi, replay_window; } (the bitmap is the kernel's).
	ne.PutUint16(b[off:], uint16(esnAttrLen))
	ne.PutUint16(b[off+2:], nl.XFRMA_REPLAY_ESN_VAL)
	e := b[off+rtaHdrLen:]
	ne.PutUint32(e[0:], uint32((replayWindow+31)/32))
	ne.PutUint32(e[20:], replayWindow)
	off += align4(esnAttrLen)
	return b[:off]
}

const saMessageLen = nlmsgHdrLen + nl.SizeofXfrmUsersaInfo + (aeadAttrLen+3)&^3 + (esnAttrLen+3)&^3

// sendSA sends one SA request from a locked buffer and reads the
// kernel's acknowledgement.
func sendSA(msgType uint16, src, dst netip.Addr, spi uint32, key []byte, reqid int) error {
	buf, err := secret.New(saMessageLen)
	if err != nil {
		return err
	}
	defer buf.Destroy()
	seq := saSeq.Add(1)
	msg := saMessage(buf.Bytes(), msgType, seq, src, dst, spi, key, reqid)

	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_XFRM)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, netlinkCapAck, 1); err != nil {
		return fmt.Errorf("netlink: NETLINK_CAP_ACK: %w", err)
	}
	tv := unix.Timeval{Sec: 5}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	if err := unix.Sendto(fd, msg, 0, kernel); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf.Destroy() // the kernel has its copy: ours goes at once
	reply := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, reply, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(reply[:n])
		if err != nil {
			return fmt.Errorf("netlink reply: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				return fmt.Errorf("netlink: unexpected reply type %d", m.Header.Type)
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}
