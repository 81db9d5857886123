package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testStall is the StallTimeout of these tests: short, so that they run
// fast; every assertion on time uses a bound far above it.
const testStall = 500 * time.Millisecond

// stallMidBody forwards the headers and the first half of the real answer,
// then sends nothing more until the client gives up (or the test ends).
func stallMidBody(release <-chan struct{}) fault {
	return func(w http.ResponseWriter, r *http.Request, serve http.Handler) bool {
		writeHalf(w, r, serve)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return true
	}
}

// stallBeforeHeaders sends nothing at all until the client gives up.
func stallBeforeHeaders(release <-chan struct{}) fault {
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return true
	}
}

// releaseOnCleanup returns a channel closed when the test ends, before the
// servers it started are closed (cleanups run last-registered first), so
// that no stalled handler holds up srv.Close.
func releaseOnCleanup(t *testing.T) <-chan struct{} {
	c := make(chan struct{})
	t.Cleanup(func() { close(c) })
	return c
}

// A body that stops mid-way, or headers that never come, end the attempt
// after StallTimeout; the retry gets the exact bytes.
func TestHTTPStallRetried(t *testing.T) {
	data := testData(3<<20+17, 21)
	cases := map[string]func(release <-chan struct{}) fault{
		"mid-body":       stallMidBody,
		"before headers": stallBeforeHeaders,
	}
	for name, stall := range cases {
		t.Run(name, func(t *testing.T) {
			var stalled atomic.Int64
			var release <-chan struct{}
			srv, reqs := faultServer(t, data, func(n int64) fault {
				if n == 0 {
					stalled.Add(1)
					return stall(release)
				}
				return nil
			})
			release = releaseOnCleanup(t)
			h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), Retry: fastRetry, StallTimeout: testStall})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			buf := make([]byte, 1<<20)
			start := time.Now()
			if _, err := h.ReadAt(buf, 4096); err != nil || !bytes.Equal(buf, data[4096:4096+1<<20]) {
				t.Fatalf("read: %v (or bytes differ)", err)
			}
			if d := time.Since(start); d > 30*time.Second {
				t.Fatalf("read took %s with a %s stall timeout", d, testStall)
			}
			if st := h.Stats(); stalled.Load() != 1 || st.Retries != 1 || reqs.Load() != 2 {
				t.Fatalf("%d stalls, stats %+v, %d requests; want 1 stall, 1 retry, 2 requests", stalled.Load(), st, reqs.Load())
			}
		})
	}
}

// A server that always stalls fails the read within a bounded time, after
// the retry budget, with an error that says it stalled and where.
func TestHTTPAlwaysStallingFails(t *testing.T) {
	data := testData(2<<20, 22)
	cases := map[string]struct {
		stall func(release <-chan struct{}) fault
		want  string
	}{
		"mid-body":       {stallMidBody, fmt.Sprintf("stalled: no data for %s after 524288 of 1048576 bytes (gave up after 3 attempts)", testStall)},
		"before headers": {stallBeforeHeaders, fmt.Sprintf("stalled: no response headers within %s (gave up after 3 attempts)", testStall)},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var release <-chan struct{}
			srv, reqs := faultServer(t, data, func(int64) fault { return c.stall(release) })
			release = releaseOnCleanup(t)
			h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), StallTimeout: testStall,
				Retry: RetryPolicy{Attempts: 3, Base: time.Millisecond, Max: 5 * time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			done := make(chan error, 1)
			go func() {
				_, err := h.ReadAt(make([]byte, 1<<20), 1<<20)
				done <- err
			}()
			select {
			case err = <-done:
			case <-time.After(60 * time.Second):
				t.Fatalf("read from a stalling server still blocked after 60s (stall timeout %s)", testStall)
			}
			var te *transientError
			if err == nil || errors.As(err, &te) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "GET bytes=1048576-2097151") {
				t.Fatalf("read: %v; want an error ending %q", err, c.want)
			}
			if reqs.Load() != 3 {
				t.Fatalf("%d requests, want 3 (the retry budget)", reqs.Load())
			}
		})
	}
}

// Sequential mode's stream is watched too: a stall mid-stream restarts it.
func TestHTTPSequentialStallRestarts(t *testing.T) {
	data := testData(4<<20+3, 23)
	var release <-chan struct{}
	srv, reqs := faultServer(t, data, func(n int64) fault {
		return func(w http.ResponseWriter, r *http.Request, s http.Handler) bool {
			if r.Header.Get("Range") != "" {
				return status(400)(w, r, s)
			}
			if n == 1 { // the first full GET stalls half way
				return stallMidBody(release)(w, r, s)
			}
			return false
		}
	})
	release = releaseOnCleanup(t)
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), Retry: fastRetry, CacheDir: t.TempDir(), StallTimeout: testStall})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	got := make([]byte, len(data))
	if _, err := h.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read: %v (or bytes differ)", err)
	}
	if h.Mode() != ModeSequential || h.Stats().Retries != 1 || reqs.Load() != 3 {
		t.Fatalf("mode %s, stats %+v, %d requests; want sequential, 1 retry, 3 requests", h.Mode(), h.Stats(), reqs.Load())
	}
}

// A sequential stream that pauses because it is far enough ahead of the
// readers is not a stall: the pause may last longer than StallTimeout.
func TestHTTPSequentialPauseIsNotAStall(t *testing.T) {
	data := testData(8<<20, 24)
	srv, reqs := faultServer(t, data, func(int64) fault { return fullBody(data) })
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), SeqAhead: 1 << 20, CacheDir: t.TempDir(),
		StallTimeout: testStall, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	buf := make([]byte, 64<<10)
	if _, err := h.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data[:len(buf)]) {
		t.Fatalf("first read: %v (or bytes differ)", err)
	}
	time.Sleep(3 * testStall) // the stream waits for readers meanwhile
	rest := make([]byte, len(data)-len(buf))
	if _, err := h.ReadAt(rest, int64(len(buf))); err != nil || !bytes.Equal(rest, data[len(buf):]) {
		t.Fatalf("read after the pause: %v (or bytes differ)", err)
	}
	if h.Stats().Retries != 0 || reqs.Load() != 1 {
		t.Fatalf("stats %+v, %d requests: the pause was taken for a stall", h.Stats(), reqs.Load())
	}
}
