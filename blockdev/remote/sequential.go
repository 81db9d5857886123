package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

// sequential is the mode of a server that does not honour Range: one
// streaming GET fills a sparse local file from the start, reads wait until
// their bytes have arrived, and the download pauses once it is SeqAhead past
// the furthest byte any reader asked for (and stops when the source closes).
type sequential struct {
	h       *HTTP
	f       *os.File
	size    int64
	streams sync.WaitGroup // running streams (at most one)

	mu   sync.Mutex
	cond *sync.Cond
	have int64 // bytes [0, have) are on disk (and hashed)
	want int64 // furthest byte asked for
	err  error // failure of the last stream; nil while one runs
	// healable says err is a network failure (retries exhausted): the next
	// read that needs more bytes starts a new stream, so a mount works again
	// once the network heals. Other failures (integrity, 403, ...) stay.
	healable bool
	running  bool // a stream is running or being started
	closed   bool
	cancel   context.CancelFunc // ends the current stream's request

	hash     hash.Hash
	wantSum  []byte
	verified bool
}

var errSourceClosed = errors.New("source closed")

// switchToSequential moves the source to sequential mode, streaming from
// sw's 200 answer or from a new GET without Range.
func (h *HTTP) switchToSequential(sw *switchError) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seq != nil { // another reader switched first
		if sw.resp != nil {
			sw.resp.Body.Close()
			sw.cancel()
		}
		return nil
	}
	resp, cancel := sw.resp, sw.cancel
	if resp == nil {
		var err error
		if resp, cancel, err = h.fullGet(); err != nil {
			return err
		}
	}
	if h.size <= 0 {
		if resp.ContentLength < 0 {
			resp.Body.Close()
			cancel()
			return fmt.Errorf("%s: the server ignores Range and does not say the size: %w", h.name, ErrRemote)
		}
		h.size = resp.ContentLength
	}
	s := &sequential{h: h, size: h.size, cancel: cancel, running: true}
	s.cond = sync.NewCond(&s.mu)
	if h.opts.Hash.Algo != "" {
		var err error
		if s.hash, s.wantSum, err = h.opts.Hash.newHash(); err != nil {
			resp.Body.Close()
			cancel()
			return fmt.Errorf("%s: %w", h.name, err)
		}
	}
	f, err := sparseFile(h.opts.CacheDir, h.size)
	if err != nil {
		resp.Body.Close()
		cancel()
		return fmt.Errorf("%s: sequential mode cache: %w", h.name, err)
	}
	s.f = f
	h.seq = s
	s.streams.Add(1)
	go s.run(resp, 0)
	return nil
}

// sparseFile creates an unlinked file of the given size in dir (or the
// default cache directory, or the temp dir).
func sparseFile(dir string, size int64) (*os.File, error) {
	if dir == "" {
		dir = CacheDirDefault()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		dir = os.TempDir()
	}
	f, err := os.CreateTemp(dir, "imgfs-seq-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// fullGet requests the whole object (no Range), with retries.
func (h *HTTP) fullGet() (*http.Response, context.CancelFunc, error) {
	var resp *http.Response
	var cancel context.CancelFunc
	err := h.withRetry(h.ctx, func() error {
		ctx, c := context.WithCancel(h.ctx)
		req, err := h.newRequest(ctx, "")
		if err != nil {
			c()
			return err
		}
		r, err := h.do(ctx, req, "GET")
		if err != nil {
			c()
			return err
		}
		if r.StatusCode != http.StatusOK {
			io.Copy(io.Discard, io.LimitReader(r.Body, 4096))
			r.Body.Close()
			c()
			if r.StatusCode == http.StatusPartialContent {
				return fmt.Errorf("%s: GET without Range answered 206: %w", h.name, ErrRemote)
			}
			return h.statusError(r, "GET")
		}
		if h.size > 0 && r.ContentLength >= 0 && r.ContentLength != h.size {
			r.Body.Close()
			c()
			return fmt.Errorf("%s: GET: %d bytes for an object of %d: %w", h.name, r.ContentLength, h.size, ErrRemote)
		}
		resp, cancel = r, c
		return nil
	})
	return resp, cancel, err
}

// run streams resp, whose first skip bytes are already on disk, until the
// object is complete, the source closes, or the stream fails beyond the
// retry policy. A broken stream is restarted from the start and the bytes
// already on disk are skipped; a stream that made progress since the last
// failure starts the retry count afresh.
func (s *sequential) run(resp *http.Response, skip int64) {
	defer s.streams.Done()
	buf := make([]byte, 1<<20)
	pol := s.h.opts.Retry.withDefaults()
	for failures := 0; ; {
		err := s.consume(resp.Body, buf, skip)
		resp.Body.Close()
		s.mu.Lock()
		s.cancel()
		closed, progressed := s.closed, s.have > skip
		s.mu.Unlock()
		if progressed {
			failures = 0
		}
		var te *transientError
		switch {
		case err == nil || closed:
			s.fail(nil)
			return
		case !errors.As(err, &te) || failures+1 >= pol.Attempts:
			s.fail(err)
			return
		}
		failures++
		s.h.c.retries.Add(1)
		select {
		case <-time.After(pol.backoff(failures-1, te.retryAfter)):
		case <-s.h.ctx.Done():
			s.fail(errSourceClosed)
			return
		}
		r, cancel, gerr := s.h.fullGet()
		if gerr != nil {
			s.fail(gerr)
			return
		}
		s.mu.Lock()
		resp, s.cancel, skip = r, cancel, s.have
		s.mu.Unlock()
	}
}

// fail ends the current stream with err (nil: the object is complete or
// the source closed) and wakes the readers.
func (s *sequential) fail(err error) {
	s.mu.Lock()
	s.running, s.err = false, err
	s.healable = err != nil && isNetworkFailure(err)
	s.cond.Broadcast()
	s.mu.Unlock()
}

// restartLocked starts a new stream after a network failure, from the
// bytes on disk on; s.mu is held (and released while the GET is sent).
// On failure s.err says why.
func (s *sequential) restartLocked() {
	s.running, s.err, s.healable = true, nil, false
	s.mu.Unlock()
	resp, cancel, err := s.h.fullGet()
	s.mu.Lock()
	if err == nil && s.closed {
		resp.Body.Close()
		cancel()
		err = errSourceClosed
	}
	if err != nil {
		s.running, s.err, s.healable = false, err, isNetworkFailure(err)
		s.cond.Broadcast()
		return
	}
	s.cancel = cancel
	s.streams.Add(1)
	go s.run(resp, s.have)
}

// consume copies body to the file from offset have, skipping its first
// skip bytes (already on disk from an earlier stream).
func (s *sequential) consume(body io.Reader, buf []byte, skip int64) error {
	name := s.h.name
	for skip > 0 {
		n, err := body.Read(buf[:min(int64(len(buf)), skip)])
		s.h.c.bytes.Add(int64(n))
		skip -= int64(n)
		if err != nil && skip > 0 {
			return &transientError{err: fmt.Errorf("%s: restarted download: %v", name, err)}
		}
	}
	for {
		s.mu.Lock()
		for !s.closed && s.have < s.size && s.have >= s.want+s.h.opts.SeqAhead {
			s.cond.Wait()
		}
		have, closed := s.have, s.closed
		s.mu.Unlock()
		if closed {
			return errSourceClosed
		}
		if have == s.size {
			return nil
		}
		n, err := body.Read(buf[:min(int64(len(buf)), s.size-have)])
		s.h.c.bytes.Add(int64(n))
		if n > 0 {
			if _, werr := s.f.WriteAt(buf[:n], have); werr != nil {
				return fmt.Errorf("%s: sequential cache: %w", name, werr)
			}
			var verr error
			if s.hash != nil {
				s.hash.Write(buf[:n])
				if have+int64(n) == s.size {
					if got := s.hash.Sum(nil); !bytes.Equal(got, s.wantSum) {
						verr = fmt.Errorf("%s: %s of the downloaded image is %x, metadata says %x: %w", name, s.h.opts.Hash.Algo, got, s.wantSum, ErrIntegrity)
					}
				}
			}
			s.mu.Lock()
			if verr != nil {
				s.err = verr
			} else {
				s.have = have + int64(n)
				s.verified = s.hash != nil && s.have == s.size
			}
			s.cond.Broadcast()
			s.mu.Unlock()
			if verr != nil {
				return verr
			}
			continue
		}
		if err == io.EOF {
			return &transientError{err: fmt.Errorf("%s: download ended at byte %d of %d (short body)", name, have, s.size)}
		}
		if err != nil {
			return &transientError{err: fmt.Errorf("%s: download at byte %d: %v", name, have, err)}
		}
	}
}

// readAt waits until [off, off+len(p)) has arrived and reads it.
func (s *sequential) readAt(p []byte, off int64) error {
	end := off + int64(len(p))
	s.mu.Lock()
	if end > s.want {
		s.want = end
		s.cond.Broadcast()
	}
	if s.have < end && s.err != nil && s.healable && !s.running && !s.closed {
		s.restartLocked()
	}
	for s.have < end && s.err == nil && !s.closed {
		s.cond.Wait()
	}
	have, err, closed := s.have, s.err, s.closed
	s.mu.Unlock()
	if have < end {
		if err == nil && closed {
			err = errSourceClosed
		}
		return err
	}
	if _, err := s.f.ReadAt(p, off); err != nil {
		return fmt.Errorf("%s: sequential cache: %w", s.h.name, err)
	}
	return nil
}

// complete reports whether the whole object has streamed by and, when a
// hash was given, matched it; err is the stream's failure if any.
func (s *sequential) complete() (bool, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.have == s.size, s.verified, s.err
}

func (s *sequential) close() {
	s.mu.Lock()
	s.closed = true
	s.cancel()
	s.cond.Broadcast()
	s.mu.Unlock()
	s.streams.Wait()
	s.f.Close()
}

// Verified reports whether the whole object has been downloaded and
// matched opts.Hash (sequential mode only), and any integrity failure.
func (h *HTTP) Verified() (bool, error) {
	h.mu.Lock()
	s := h.seq
	h.mu.Unlock()
	if s == nil {
		return false, nil
	}
	_, ok, err := s.complete()
	if errors.Is(err, ErrIntegrity) {
		return false, err
	}
	return ok, nil
}

// VerifyAll reads the rest of a sequential download and checks opts.Hash.
// In range mode it returns (false, nil): the Cache verifies those.
func (h *HTTP) VerifyAll() (bool, error) {
	h.mu.Lock()
	s := h.seq
	h.mu.Unlock()
	if s == nil {
		return false, nil
	}
	if s.hash == nil {
		return false, nil
	}
	one := make([]byte, 1)
	if err := s.readAt(one, s.size-1); err != nil {
		return false, err
	}
	return h.Verified()
}
