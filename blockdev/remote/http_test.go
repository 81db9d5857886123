package remote

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgfs/imgfs/blockdev"
)

func testData(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// fileServer serves data with the standard library's real Range support
// (http.FileServer over a real file) and counts requests.
func fileServer(t *testing.T, data []byte) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "image"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

var fastRetry = RetryPolicy{Attempts: 5, Base: time.Millisecond, Max: 5 * time.Millisecond}

func checkReads(t *testing.T, d blockdev.Device, data []byte, seed uint64, count int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < count; i++ {
		off := r.Int64N(int64(len(data)))
		n := 1 + r.IntN(3<<20)
		buf := make([]byte, n)
		got, err := d.ReadAt(buf, off)
		want := min(n, len(data)-int(off))
		if got != want {
			t.Fatalf("read %d at %d: got %d bytes, want %d (err %v)", n, off, got, want, err)
		}
		if err != nil && !(errors.Is(err, io.EOF) && want < n) {
			t.Fatalf("read %d at %d: %v", n, off, err)
		}
		if !bytes.Equal(buf[:got], data[off:off+int64(got)]) {
			t.Fatalf("read %d at %d: bytes differ", n, off)
		}
	}
}

func TestHTTPRandomReadsEqual(t *testing.T) {
	data := testData(5<<20+123, 1)
	srv, _ := fileServer(t, data)
	h, err := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.Size() != int64(len(data)) || h.Mode() != ModeRange {
		t.Fatalf("size %d mode %s, want %d range", h.Size(), h.Mode(), len(data))
	}
	checkReads(t, h, data, 1, 30)
	c, err := NewCache(h, CacheOptions{BlockSize: 64 << 10, MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkReads(t, c, data, 2, 50)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() { defer wg.Done(); checkReads(t, c, data, uint64(10+g), 20) }()
	}
	wg.Wait()
	if s := c.Stats(); s.CacheMisses == 0 || s.CacheHits == 0 || s.Retries != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// Eight readers of one cold block cause one request: for a whole block, or
// for the 64 KiB piece that small isolated reads fetch.
func TestCacheSingleFlight(t *testing.T) {
	data := testData(4<<20, 2)
	for _, small := range []int64{-1, 0} {
		srv, reqs := fileServer(t, data)
		h, err := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{Size: int64(len(data))})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := NewCache(h, CacheOptions{ReadAhead: -1, SmallReadSize: small})
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 4096)
				if _, err := c.ReadAt(buf, 1<<20+int64(g)*4096); err != nil || !bytes.Equal(buf, data[1<<20+g*4096:][:4096]) {
					t.Errorf("reader %d: %v or bytes differ", g, err)
				}
			}()
		}
		wg.Wait()
		want := int64(1 << 20)
		if small == 0 {
			want = DefaultSmallRead
		}
		if n := reqs.Load(); n != 1 {
			t.Fatalf("small=%d: %d requests for one block, want 1", small, n)
		}
		if s := c.Stats(); s.BytesFetched != want || s.Requests != 1 {
			t.Fatalf("small=%d: stats %+v, want %d bytes", small, s, want)
		}
		c.Close()
		h.Close()
	}
}

// A sequential reader gets blocks fetched ahead; memory stays bounded.
func TestCacheReadAheadAndBound(t *testing.T) {
	data := testData(16<<20, 3)
	srv, _ := fileServer(t, data)
	h, _ := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{Size: int64(len(data))})
	defer h.Close()
	c, _ := NewCache(h, CacheOptions{BlockSize: 256 << 10, MaxBytes: 2 << 20, ReadAhead: 4, Parallel: 4})
	defer c.Close()
	buf := make([]byte, 100000)
	var got []byte
	for off := int64(0); off < int64(len(data)); off += int64(len(buf)) {
		n, err := c.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("sequential read differs")
	}
	s := c.Stats()
	if s.ReadAhead == 0 {
		t.Fatalf("no read-ahead: %+v", s)
	}
	// consecutive missing blocks go out as one request
	if blocks := int64(len(data)) / (256 << 10); s.Requests > blocks*2/3 {
		t.Fatalf("%d requests for %d blocks: runs are not coalesced (%+v)", s.Requests, blocks, s)
	}
	t.Logf("%+v", s)
	if s.BytesFetched > int64(len(data))+4*(256<<10) {
		t.Fatalf("fetched %d bytes for %d", s.BytesFetched, len(data))
	}
	c.mu.Lock()
	used := c.used
	c.mu.Unlock()
	if used > 2<<20 {
		t.Fatalf("cache holds %d bytes, bound 2 MiB", used)
	}
}

// fault is what the proxy does to request number n (from 0) instead of
// serving it; nil serves it.
type fault func(w http.ResponseWriter, r *http.Request, serve http.Handler) bool

// faultServer serves data with http.ServeContent, letting plan(n) take
// over request n.
func faultServer(t *testing.T, data []byte, plan func(n int64) fault) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	serve := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "image", time.Time{}, bytes.NewReader(data))
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1) - 1
		if f := plan(i); f != nil && f(w, r, serve) {
			return
		}
		serve.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func status(code int, hdr ...string) fault {
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "fault %d", code)
		return true
	}
}

func reset(w http.ResponseWriter, _ *http.Request, _ http.Handler) bool {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}
	return true
}

// writeHalf sends the real answer's status and headers (announcing the
// whole body) and the first half of its body.
func writeHalf(w http.ResponseWriter, r *http.Request, serve http.Handler) {
	rec := httptest.NewRecorder()
	serve.ServeHTTP(rec, r)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	body := rec.Body.Bytes()
	w.Write(body[:len(body)/2])
}

// shortBody announces the full range but sends half of it and closes.
func shortBody(w http.ResponseWriter, r *http.Request, serve http.Handler) bool {
	writeHalf(w, r, serve)
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.Close()
	}
	return true
}

// wrongRange answers 206 for a range shifted by one byte.
func wrongRange(data []byte) fault {
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		var a, b int64
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b)
		a, b = a+1, min(b+1, int64(len(data))-1)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, len(data)))
		w.Header().Set("Content-Length", fmt.Sprint(b-a+1))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[a : b+1])
		return true
	}
}

func fullBody(data []byte) fault {
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data)
		return true
	}
}

// Every transient fault is retried and the bytes come out exact.
func TestHTTPTransientFaultsRetried(t *testing.T) {
	data := testData(3<<20, 4)
	cases := map[string]fault{
		"reset":      reset,
		"500":        status(500),
		"503":        status(503),
		"429":        status(429, "Retry-After", "0"),
		"short body": shortBody,
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			// every other request fails
			srv, reqs := faultServer(t, data, func(n int64) fault {
				if n%2 == 0 {
					return f
				}
				return nil
			})
			h, err := OpenHTTP(context.Background(), srv.URL+"/image?sig=SECRET", HTTPOptions{Retry: fastRetry})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			c, _ := NewCache(h, CacheOptions{BlockSize: 512 << 10, Parallel: 1, ReadAhead: -1})
			got := make([]byte, len(data))
			if _, err := c.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("bytes differ after retries")
			}
			s := c.Stats()
			if s.Retries == 0 || s.Requests > reqs.Load() {
				t.Fatalf("stats %+v, server saw %d requests", s, reqs.Load())
			}
		})
	}
}

// Faults that persist end in a clear error, not in wrong bytes.
func TestHTTPPersistentFaultsFail(t *testing.T) {
	data := testData(1<<20, 5)
	cases := []struct {
		name  string
		f     fault
		want  string
		quick bool // fails at once, without retries
	}{
		{"503 forever", status(503), "503", false},
		{"reset forever", reset, "gave up after", false},
		{"short body forever", shortBody, "short body", false},
		{"403", status(403), "403 Forbidden (access denied)", true},
		{"404", status(404), "404 Not Found", true},
		{"wrong Content-Range", wrongRange(data), "Content-Range", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, reqs := faultServer(t, data, func(int64) fault { return tc.f })
			h, err := OpenHTTP(context.Background(), srv.URL+"/image?sig=SECRET", HTTPOptions{Size: int64(len(data)), Retry: fastRetry,
				Token: staticToken("TOKEN-SECRET")})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			buf := make([]byte, 4096)
			n, err := h.ReadAt(buf, 8192)
			if err == nil || n != 0 {
				t.Fatalf("read succeeded (%d bytes) through %s", n, tc.name)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || !strings.Contains(msg, srv.URL+"/image") {
				t.Fatalf("error %q does not name %q and the URL", msg, tc.want)
			}
			if strings.Contains(msg, "SECRET") {
				t.Fatalf("error %q leaks a secret", msg)
			}
			if tc.quick && reqs.Load() != 1 {
				t.Fatalf("%d requests, want 1 (no retry)", reqs.Load())
			}
			if !tc.quick && reqs.Load() != int64(fastRetry.Attempts) {
				t.Fatalf("%d requests, want %d", reqs.Load(), fastRetry.Attempts)
			}
		})
	}
}

type staticToken string

func (s staticToken) Token(context.Context) (string, error)         { return string(s), nil }
func (s staticToken) Renew(context.Context, string) (string, error) { return string(s), nil }

type countingToken struct {
	renewals atomic.Int64
}

func (c *countingToken) Token(context.Context) (string, error) { return "old", nil }
func (c *countingToken) Renew(_ context.Context, stale string) (string, error) {
	if stale != "old" {
		return "", fmt.Errorf("renew of %q", stale)
	}
	c.renewals.Add(1)
	return "new", nil
}

// A 401 renews the token once and the request is repeated with the new one.
func TestHTTPRenewsTokenOn401(t *testing.T) {
	data := testData(1<<20, 6)
	srv, _ := faultServer(t, data, func(int64) fault {
		return func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			if r.Header.Get("X-Auth-Token") != "new" {
				w.WriteHeader(http.StatusUnauthorized)
				return true
			}
			return false
		}
	})
	tok := &countingToken{}
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Token: tok, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	buf := make([]byte, 1000)
	if _, err := h.ReadAt(buf, 5000); err != nil || !bytes.Equal(buf, data[5000:6000]) {
		t.Fatalf("read: %v", err)
	}
	if tok.renewals.Load() != 1 || h.Stats().TokenRenewal != 1 {
		t.Fatalf("%d renewals, want 1", tok.renewals.Load())
	}

	// a token that stays rejected fails after one renewal
	srv2, reqs := faultServer(t, data, func(int64) fault { return status(401) })
	h2, err := OpenHTTP(context.Background(), srv2.URL, HTTPOptions{Size: int64(len(data)), Token: staticToken("t"), Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if _, err := h2.ReadAt(buf, 0); err == nil || !strings.Contains(err.Error(), "401") || reqs.Load() != 2 {
		t.Fatalf("err %v after %d requests, want a 401 after 2", err, reqs.Load())
	}
}

// A server that answers 200 with the full body, or 400/416, to a Range
// request is read in sequential mode, and the bytes are exact.
func TestHTTPSequentialFallback(t *testing.T) {
	data := testData(6<<20+77, 7)
	sum := sha512.Sum512(data)
	refuse := map[string]fault{
		"200 full body": fullBody(data),
		"400":           status(400),
		"416":           status(416),
	}
	for name, f := range refuse {
		t.Run(name, func(t *testing.T) {
			srv, _ := faultServer(t, data, func(int64) fault {
				return func(w http.ResponseWriter, r *http.Request, s http.Handler) bool {
					if r.Header.Get("Range") == "" {
						return fullBody(data)(w, r, s)
					}
					return f(w, r, s)
				}
			})
			for _, known := range []bool{false, true} {
				opts := HTTPOptions{Retry: fastRetry, CacheDir: t.TempDir(), Hash: HashSpec{"sha512", hex.EncodeToString(sum[:])}}
				if known {
					opts.Size = int64(len(data))
				}
				h, err := OpenHTTP(context.Background(), srv.URL, opts)
				if err != nil {
					t.Fatal(err)
				}
				c, _ := NewCache(h, CacheOptions{BlockSize: 128 << 10})
				checkReads(t, c, data, 8, 20)
				if h.Mode() != ModeSequential || c.Mode() != ModeSequential {
					t.Fatalf("mode %s", h.Mode())
				}
				if ok, err := h.VerifyAll(); !ok || err != nil {
					t.Fatalf("verify: %v %v", ok, err)
				}
				c.Close()
				h.Close()
			}
		})
	}
}

// Sequential mode stops downloading when nothing more is wanted.
func TestHTTPSequentialStopsEarly(t *testing.T) {
	data := testData(64<<20, 9)
	srv, _ := faultServer(t, data, func(int64) fault { return fullBody(data) })
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), SeqAhead: 4 << 20, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	if _, err := h.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data[:1<<20]) {
		t.Fatalf("read: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	fetched := h.Stats().BytesFetched
	h.Close()
	if fetched > 16<<20 {
		t.Fatalf("fetched %d bytes of 64 MiB to read 1 MiB", fetched)
	}
	if _, err := h.ReadAt(buf, 32<<20); err == nil {
		t.Fatal("read after Close succeeded")
	}
}

// A sequential stream that breaks is restarted and skips what it has; a
// wrong checksum fails the read that completes the download.
func TestHTTPSequentialRestartAndIntegrity(t *testing.T) {
	data := testData(5<<20, 10)
	srv, reqs := faultServer(t, data, func(n int64) fault {
		return func(w http.ResponseWriter, r *http.Request, s http.Handler) bool {
			if r.Header.Get("Range") != "" {
				return status(400)(w, r, s)
			}
			if n == 1 { // the first full GET breaks half way
				return shortBody(w, r, s)
			}
			return false
		}
	})
	sum := sha512.Sum512(data)
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), Retry: fastRetry, CacheDir: t.TempDir(),
		Hash: HashSpec{"sha512", hex.EncodeToString(sum[:])}})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := h.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read: %v", err)
	}
	if ok, err := h.Verified(); !ok || err != nil || h.Stats().Retries == 0 || reqs.Load() != 3 {
		t.Fatalf("verified %v %v, stats %+v, %d requests", ok, err, h.Stats(), reqs.Load())
	}
	h.Close()

	bad := sum
	bad[0] ^= 1
	h, err = OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), Retry: fastRetry, CacheDir: t.TempDir(),
		Hash: HashSpec{"sha512", hex.EncodeToString(bad[:])}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.ReadAt(got, 0); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("read of a corrupted download: %v, want ErrIntegrity", err)
	}
}

// The cache verifies a whole-image checksum from blocks as they arrive.
func TestCacheVerify(t *testing.T) {
	data := testData(3<<20+5, 11)
	srv, _ := fileServer(t, data)
	sum := sha512.Sum512(data)
	for _, corrupt := range []bool{false, true} {
		want := sum
		if corrupt {
			want[5] ^= 0x80
		}
		h, _ := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{})
		c, err := NewCache(h, CacheOptions{BlockSize: 256 << 10, Hash: HashSpec{"sha512", hex.EncodeToString(want[:])}})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		c.ReadAt(buf, 0)
		c.ReadAt(buf, 2<<20) // leaves a gap at 1 MiB
		err = c.Verify(context.Background())
		if corrupt != errors.Is(err, ErrIntegrity) || (!corrupt && err != nil) {
			t.Fatalf("corrupt=%v: verify %v", corrupt, err)
		}
		if c.VerifiedPrefix() != int64(len(data)) {
			t.Fatalf("verified %d of %d", c.VerifiedPrefix(), len(data))
		}
		c.Close()
		h.Close()
	}
}

func TestParseContentRange(t *testing.T) {
	for v, ok := range map[string]bool{"bytes 0-9/10": true, "bytes 5-5/*": true, "bytes 0-10/10": false,
		"bytes 9-5/10": false, "items 0-1/2": false, "bytes -1-5/10": false, "bytes 0-1": false} {
		if _, _, _, err := parseContentRange(v); (err == nil) != ok {
			t.Errorf("%q: err %v", v, err)
		}
	}
}

// A server that does not answer in time is asked again.
func TestHTTPTimeoutRetried(t *testing.T) {
	data := testData(1<<20, 12)
	srv, reqs := faultServer(t, data, func(n int64) fault {
		if n == 0 {
			return func(w http.ResponseWriter, r *http.Request, s http.Handler) bool {
				select {
				case <-time.After(2 * time.Second):
				case <-r.Context().Done():
				}
				return true
			}
		}
		return nil
	})
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), Retry: fastRetry, RequestTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	buf := make([]byte, 5000)
	if _, err := h.ReadAt(buf, 100); err != nil || !bytes.Equal(buf, data[100:5100]) {
		t.Fatalf("read: %v", err)
	}
	if h.Stats().Retries != 1 || reqs.Load() != 2 {
		t.Fatalf("stats %+v, %d requests", h.Stats(), reqs.Load())
	}
}

// Parallel readers that all see the same token expire renew it once: the
// others retry with the token the first one got.
func TestHTTPParallel401RenewsOnce(t *testing.T) {
	data := testData(2<<20, 8)
	const readers = 8
	var rejected atomic.Int64
	all := make(chan struct{})
	srv, _ := faultServer(t, data, func(int64) fault {
		return func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			if r.Header.Get("X-Auth-Token") == "new" {
				return false
			}
			if rejected.Add(1) == readers {
				close(all)
			}
			<-all // every reader is rejected before any renews
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
	})
	tok := &countingToken{}
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), Token: tok, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for i := range readers {
		wg.Go(func() {
			off := int64(i) * 200000
			buf := make([]byte, 100000)
			if _, err := h.ReadAt(buf, off); err != nil {
				errs <- err
			} else if !bytes.Equal(buf, data[off:off+100000]) {
				errs <- fmt.Errorf("reader %d: bytes differ", i)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := tok.renewals.Load(); n != 1 {
		t.Fatalf("%d renewals for one expiry seen by %d readers, want 1", n, readers)
	}
}
