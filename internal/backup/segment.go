package backup

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/bulwarkvm/bulwark/internal/secret"
)

// SegmentWriter encrypts one segment: a new secret, wrapped by the public
// key, and the plaintext written to it in sealed chunks.
type SegmentWriter struct {
	w       io.Writer
	sec     *secret.Buf
	p       *pipeline
	cur     []byte // the chunk being filled
	n       int
	index   uint64
	written int64
	err     error
	closed  bool
}

// NewSegmentWriter writes the header of a new segment to w. h.KeyID is
// set from pub. workers < 1 means one per CPU.
func NewSegmentWriter(w io.Writer, pub *rsa.PublicKey, h Header, workers int) (*SegmentWriter, error) {
	if pub.N.BitLen() != KeyBits {
		return nil, fmt.Errorf("backup: public key has %d bits, not %d", pub.N.BitLen(), KeyBits)
	}
	id, err := IDOf(pub)
	if err != nil {
		return nil, err
	}
	h.KeyID = id
	if err := h.check(); err != nil {
		return nil, err
	}
	sec, err := secret.Random(secretLen)
	if err != nil {
		return nil, err
	}
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, sec.Bytes(), []byte(oaepLabel))
	if err != nil {
		sec.Destroy()
		return nil, fmt.Errorf("backup: wrapping the segment secret: %w", err)
	}
	return newSegmentWriter(w, h, wrapped, sec, workers)
}

// newSegmentWriter is NewSegmentWriter once the secret is drawn and
// wrapped; it takes sec over. The fuzz tests seal with a fixed secret
// through it, without RSA.
func newSegmentWriter(w io.Writer, h Header, wrapped []byte, sec *secret.Buf, workers int) (*SegmentWriter, error) {
	hdr := h.marshal(wrapped)
	c, err := newChunker(sec.Bytes(), hdr, h.ChunkLog)
	if err != nil {
		sec.Destroy()
		return nil, err
	}
	if _, err := w.Write(hdr); err != nil {
		sec.Destroy()
		return nil, err
	}
	s := &SegmentWriter{w: w, sec: sec, written: int64(len(hdr))}
	s.p = newPipeline(Workers(workers), h.ChunkSize()+tagLen, c, func(c *chunker, mac hash.Hash, j *job) {
		j.out = c.seal(mac, j.index, j.final, j.buf, j.n)
	})
	s.cur = s.p.buffer()
	return s, nil
}

// Write encrypts p. A full chunk is sealed only once more data arrives,
// because only then is it known not to be the final one.
func (s *SegmentWriter) Write(p []byte) (int, error) {
	if s.closed {
		return 0, errors.New("backup: write to a closed segment")
	}
	size := len(s.cur) - tagLen
	written := 0
	for len(p) > 0 {
		if s.err != nil {
			return written, s.err
		}
		if s.n == size {
			s.push(false)
		}
		k := copy(s.cur[s.n:size], p)
		s.n += k
		p = p[k:]
		written += k
	}
	return written, s.err
}

// ReadFrom reads r to its end straight into chunk buffers, saving the
// copy Write makes (io.Copy uses it). Like Write, it seals a full chunk
// only once a read shows that more data follows.
func (s *SegmentWriter) ReadFrom(r io.Reader) (int64, error) {
	if s.closed {
		return 0, errors.New("backup: write to a closed segment")
	}
	size := len(s.cur) - tagLen
	var total int64
	for s.err == nil {
		if s.n < size {
			n, err := r.Read(s.cur[s.n:size])
			s.n += n
			total += int64(n)
			if err == io.EOF {
				return total, nil
			}
			if err != nil {
				return total, err
			}
			continue
		}
		next := s.p.buffer()
		n, err := r.Read(next[:size])
		total += int64(n)
		if n > 0 {
			s.pushWith(false, next)
			s.n = n
		} else {
			s.p.recycle(next)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	return total, s.err
}

// push hands the current chunk to the workers, writing out finished ones
// first while too many are in flight.
func (s *SegmentWriter) push(final bool) { s.pushWith(final, s.p.buffer()) }

// pushWith is push with the buffer that becomes the current chunk.
func (s *SegmentWriter) pushWith(final bool, next []byte) {
	for s.p.full() && s.err == nil {
		s.drain()
	}
	s.p.submit(&job{index: s.index, final: final, buf: s.cur, n: s.n})
	s.index++
	s.cur, s.n = next, 0
}

func (s *SegmentWriter) drain() {
	j := s.p.next()
	if s.err == nil && j.err != nil {
		s.err = j.err // a worker panicked: the segment fails
	}
	if s.err == nil {
		var n int
		n, s.err = s.w.Write(j.out)
		s.written += int64(n)
	}
	s.p.recycle(j.buf)
}

// Close seals the final chunk (the one being filled, which is empty only
// when the whole plaintext is) and writes everything out. It does not close
// the underlying writer.
func (s *SegmentWriter) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	if s.err == nil {
		s.push(true)
		for len(s.p.queue) > 0 && s.err == nil {
			s.drain()
		}
	}
	s.p.recycle(s.cur)
	s.p.stop()
	s.sec.Destroy()
	return s.err
}

// Written is the number of bytes written to the underlying writer.
func (s *SegmentWriter) Written() int64 { return s.written }

// SegmentReader authenticates and decrypts one segment. Read returns only
// plaintext whose chunk has been verified.
type SegmentReader struct {
	r      io.Reader
	h      Header
	sec    *secret.Buf
	p      *pipeline
	index  uint64
	ahead  []byte // the next sealed chunk, read ahead to learn whether the previous is final
	aheadN int
	eof    bool // r is exhausted and its last chunk submitted
	cur    *job // the chunk being read out
	pos    int
	err    error
}

// OpenSegment reads and checks a segment header, and unwraps its secret
// with the private key its key id names.
func OpenSegment(r io.Reader, keys Keyring, workers int) (*SegmentReader, error) {
	hdr, h, wrapped, err := readHeader(r)
	if err != nil {
		return nil, err
	}
	priv, ok := keys[h.KeyID]
	if !ok {
		return nil, &UnknownKeyError{h.KeyID}
	}
	plain, err := rsa.DecryptOAEP(sha256.New(), nil, priv, wrapped, []byte(oaepLabel))
	if err != nil {
		return nil, errors.New("backup: the wrapped segment secret does not decrypt with the private key of its key id (header altered)")
	}
	sec, err := secret.New(secretLen)
	if err != nil {
		secret.Zero(plain)
		return nil, err
	}
	if len(plain) != secretLen {
		secret.Zero(plain)
		sec.Destroy()
		return nil, fmt.Errorf("backup: the segment secret is %d bytes, not %d", len(plain), secretLen)
	}
	copy(sec.Bytes(), plain)
	secret.Zero(plain)
	return openSegment(r, hdr, h, sec, workers)
}

// readHeader reads a segment header from r and parses it: hdr is the whole
// header (its digest is bound into every chunk tag).
func readHeader(r io.Reader) (hdr []byte, h Header, wrapped []byte, err error) {
	hdr = make([]byte, headerLen)
	n, err := io.ReadFull(r, hdr)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, h, nil, err
	}
	h, wrapped, err = parseHeader(hdr[:n])
	return hdr, h, wrapped, err
}

// openSegment is OpenSegment once the secret is unwrapped; it takes sec
// over. The fuzz tests read with a fixed secret through it, without RSA,
// which would otherwise take nearly all of their time.
func openSegment(r io.Reader, hdr []byte, h Header, sec *secret.Buf, workers int) (*SegmentReader, error) {
	c, err := newChunker(sec.Bytes(), hdr, h.ChunkLog)
	if err != nil {
		sec.Destroy()
		return nil, err
	}
	s := &SegmentReader{r: r, h: h, sec: sec}
	s.p = newPipeline(Workers(workers), h.ChunkSize()+tagLen, c, func(c *chunker, mac hash.Hash, j *job) {
		j.out, j.err = c.open(mac, j.index, j.final, j.buf[:j.n])
	})
	return s, nil
}

// Header returns the segment's header.
func (s *SegmentReader) Header() Header { return s.h }

// fill keeps the workers busy: it reads sealed chunks and submits each
// once the next read tells whether it was the last.
func (s *SegmentReader) fill() error {
	for !s.eof && !s.p.full() {
		buf := s.p.buffer()
		n, err := io.ReadFull(s.r, buf)
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			err = nil
		case err != nil:
			s.p.recycle(buf)
			return err
		}
		if s.ahead != nil {
			if n == 0 {
				// The chunk read ahead was the last one.
				s.submit(s.ahead, s.aheadN, true)
				s.ahead = nil
				s.p.recycle(buf)
				s.eof = true
				return nil
			}
			s.submit(s.ahead, s.aheadN, false)
		}
		if n < len(buf) {
			if n == 0 && s.ahead == nil && s.index == 0 {
				s.p.recycle(buf)
				return errors.New("backup: segment has a header but no chunk (truncated)")
			}
			s.submit(buf, n, true)
			s.ahead = nil
			s.eof = true
			return nil
		}
		s.ahead, s.aheadN = buf, n
	}
	return nil
}

func (s *SegmentReader) submit(buf []byte, n int, final bool) {
	s.p.submit(&job{index: s.index, final: final, buf: buf, n: n})
	s.index++
}

// Read returns verified plaintext.
func (s *SegmentReader) Read(p []byte) (int, error) {
	for {
		if s.err != nil {
			return 0, s.err
		}
		if s.cur != nil && s.pos < len(s.cur.out) {
			n := copy(p, s.cur.out[s.pos:])
			s.pos += n
			return n, nil
		}
		if err := s.advance(); err != nil {
			return 0, err
		}
	}
}

// WriteTo writes the verified plaintext to w a chunk at a time, without
// the copy Read makes (io.Copy uses it).
func (s *SegmentReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if s.err != nil {
			return total, s.err
		}
		if s.cur != nil && s.pos < len(s.cur.out) {
			n, err := w.Write(s.cur.out[s.pos:])
			s.pos += n
			total += int64(n)
			if err != nil {
				return total, err
			}
			continue
		}
		if err := s.advance(); err == io.EOF {
			return total, nil
		} else if err != nil {
			return total, err
		}
	}
}

// advance makes the next verified chunk current; io.EOF after the last.
func (s *SegmentReader) advance() error {
	if s.cur != nil {
		s.p.recycle(s.cur.buf)
		s.cur = nil
	}
	if err := s.fill(); err != nil {
		s.err = err
		return err
	}
	if len(s.p.queue) == 0 {
		return io.EOF
	}
	j := s.p.next()
	if j.err != nil {
		s.p.recycle(j.buf)
		s.err = j.err
		return j.err
	}
	s.cur, s.pos = j, 0
	return nil
}

// Close stops the workers and destroys the segment secret.
func (s *SegmentReader) Close() error {
	if s.p == nil {
		return nil
	}
	if s.cur != nil {
		s.p.recycle(s.cur.buf)
		s.cur = nil
	}
	if s.ahead != nil {
		s.p.recycle(s.ahead)
		s.ahead = nil
	}
	s.p.stop()
	s.p = nil
	s.sec.Destroy()
	return nil
}
