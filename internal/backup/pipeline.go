package backup

import (
	"hash"
	"runtime"

	"github.com/bulwarkvm/bulwark/internal/safego"
)

// job is one chunk on its way through the workers. Jobs leave in the order
// they entered: the caller waits for the oldest.
type job struct {
	index uint64
	final bool
	buf   []byte // plaintext then sealed chunk, or sealed chunk then plaintext
	n     int    // bytes of input in buf
	out   []byte // the result, inside buf
	err   error  // the job failed (a chunk that does not verify, a panic)
	done  chan struct{}
}

// pipeline runs chunk jobs on a fixed set of workers, with a bounded
// number in flight, so that memory stays flat whatever the input size.
type pipeline struct {
	work  chan *job
	queue []*job // in flight, oldest first
	free  [][]byte
	depth int
	size  int // buffer size: chunk plus tag
}

// Workers returns n, or the number of CPUs when n < 1.
func Workers(n int) int {
	if n < 1 {
		return runtime.GOMAXPROCS(0)
	}
	return n
}

// testHookWorker, nil outside tests, runs in a worker goroutine at the
// start of each job.
var testHookWorker func()

func newPipeline(workers, bufSize int, c *chunker, fn func(c *chunker, mac hash.Hash, j *job)) *pipeline {
	p := &pipeline{work: make(chan *job, workers), depth: 2*workers + 2, size: bufSize}
	for range workers {
		mac := c.newMAC()
		go func() {
			for j := range p.work {
				// Backups run in PID1, where a panic would bring the
				// node down: a panic is the job's error instead, which
				// fails the segment, and the worker serves on, so that
				// no job is left unfinished for its waiter.
				err := safego.Call("backup pipeline worker", func() error {
					if testHookWorker != nil {
						testHookWorker()
					}
					fn(c, mac, j)
					return nil
				})
				if err != nil {
					j.out, j.err = nil, err
					mac.Reset() // whatever state the panic left it in
				}
				close(j.done)
			}
		}()
	}
	return p
}

func (p *pipeline) buffer() []byte {
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	return make([]byte, p.size)
}

// full says the caller must take the oldest job before submitting more.
func (p *pipeline) full() bool { return len(p.queue) >= p.depth }

func (p *pipeline) submit(j *job) {
	j.done = make(chan struct{})
	p.queue = append(p.queue, j)
	p.work <- j
}

// next waits for the oldest job and removes it from the queue; the caller
// hands its buffer back with recycle.
func (p *pipeline) next() *job {
	j := p.queue[0]
	p.queue = p.queue[1:]
	<-j.done
	return j
}

func (p *pipeline) recycle(b []byte) {
	clear(b) // plaintext must not linger in a pooled buffer
	p.free = append(p.free, b)
}

// stop waits for the jobs in flight, then ends the workers.
func (p *pipeline) stop() {
	for _, j := range p.queue {
		<-j.done
		clear(j.buf)
	}
	p.queue = nil
	for _, b := range p.free {
		clear(b)
	}
	p.free = nil
	close(p.work)
}
