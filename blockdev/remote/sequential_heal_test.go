package remote

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// cutBody sends the whole object's headers but only its first n bytes from
// the start, then closes the connection (FIN: a reset could discard bytes
// the client has not read yet, and the test needs them delivered).
func cutBody(data []byte, n int) fault {
	return func(w http.ResponseWriter, _ *http.Request, _ http.Handler) bool {
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data[:n])
		w.(http.Flusher).Flush()
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
		return true
	}
}

// A server without Range support that breaks every stream after 1 MiB:
// each stream makes progress, so the retry count starts afresh and the
// object arrives whole, although there are more breaks than attempts.
func TestSequentialProgressResetsRetries(t *testing.T) {
	data := testData(8<<20+5, 31)
	srv, n := faultServer(t, data, func(int64) fault { return nil })
	var streams atomic.Int64
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if r.Header.Get("Range") != "" {
			status(400)(w, r, nil)
			return
		}
		i := streams.Add(1)
		cutBody(data, int(min(int64(len(data)), i<<20)))(w, r, nil)
	})
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), Retry: fastRetry, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	got := make([]byte, len(data))
	if _, err := h.ReadAt(got, 0); err != nil {
		t.Fatalf("read after %d streams (%d attempts allowed in a row): %v", streams.Load(), fastRetry.Attempts, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("bytes differ")
	}
	if streams.Load() <= int64(fastRetry.Attempts) {
		t.Fatalf("only %d streams: the test needs more breaks than attempts", streams.Load())
	}
}

// In sequential mode a network outage fails the reads (after the retry
// budget) and the source works again once the network heals: the next read
// starts a new stream from the bytes already downloaded.
func TestSequentialHealsAfterOutage(t *testing.T) {
	data := testData(6<<20+77, 32)
	var down atomic.Bool
	var full atomic.Int64
	srv, _ := faultServer(t, data, func(int64) fault {
		return func(w http.ResponseWriter, r *http.Request, s http.Handler) bool {
			switch {
			case down.Load():
				return reset(w, r, s)
			case r.Header.Get("Range") != "":
				return status(400)(w, r, s)
			}
			if full.Add(1) == 1 {
				return cutBody(data, 2<<20)(w, r, s) // the first stream breaks at 2 MiB
			}
			// later streams send 64 KiB at a time and break when the
			// network goes down
			w.Header().Set("Content-Length", fmt.Sprint(len(data)))
			w.WriteHeader(http.StatusOK)
			for off := 0; off < len(data); off += 64 << 10 {
				if down.Load() {
					return reset(w, r, s)
				}
				if _, err := w.Write(data[off:min(off+64<<10, len(data))]); err != nil {
					return true
				}
				w.(http.Flusher).Flush()
				time.Sleep(time.Millisecond)
			}
			return true
		}
	})
	h, err := OpenHTTP(context.Background(), srv.URL, HTTPOptions{Size: int64(len(data)), Retry: fastRetry, CacheDir: t.TempDir(), SeqAhead: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	buf := make([]byte, 1<<20)
	if _, err := h.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data[:1<<20]) {
		t.Fatalf("first MiB: %v", err)
	}
	down.Store(true)
	if _, err := h.ReadAt(buf, 5<<20); err == nil {
		t.Fatal("a read past the downloaded bytes succeeded during the outage")
	}
	if _, err := h.ReadAt(buf, 5<<20); err == nil {
		t.Fatal("a second read during the outage succeeded")
	}
	down.Store(false)
	if _, err := h.ReadAt(buf, 5<<20); err != nil {
		t.Fatalf("read after the network healed: %v", err)
	}
	if !bytes.Equal(buf, data[5<<20:6<<20]) {
		t.Fatal("bytes after healing differ")
	}
	rest := make([]byte, len(data)-(6<<20))
	if _, err := h.ReadAt(rest, 6<<20); err != nil || !bytes.Equal(rest, data[6<<20:]) {
		t.Fatalf("the end after healing: %v", err)
	}
}
