package tests

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// serveDir serves dir with net/http's FileServer (real Range support,
// http.ServeContent) on 127.0.0.1 and returns its URL.
func serveDir(t *testing.T, dir string) string {
	t.Helper()
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	return srv.URL
}

// faultProxy forwards to target, letting fault take over request n (from
// 0) when it returns true. token, when set, is added as X-Auth-Token (to
// put the proxy in front of Glance). It is the fault injector that sits
// next to the real servers: the bytes it forwards are theirs.
func faultProxy(t *testing.T, target, token string, fault func(n int64, w http.ResponseWriter, r *http.Request) bool) (string, *atomic.Int64) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1) - 1
		if token != "" {
			r.Header.Set("X-Auth-Token", token)
		}
		if fault != nil && fault(i, w, r) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

func hijackClose(w http.ResponseWriter, linger bool) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	if linger {
		conn.(*net.TCPConn).SetLinger(0) // RST instead of FIN
	}
	conn.Close()
}

// truncated forwards the real answer but cuts its body in half.
func truncated(w http.ResponseWriter, r *http.Request, next http.Handler) {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	b := rec.Body.Bytes()
	w.Write(b[:len(b)/2])
	hijackClose(w, false)
}

func TestHTTPCatRawLUKSEqualsPlaintext(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(6<<20+4096, 41)
	img := testimg.QemuLUKS1(t, dir, "img", plain, testPassphrase, testimg.QemuLUKSOpts{})
	pf := passFile(t, dir, testPassphrase)
	src := serveDir(t, dir) + "/" + filepath.Base(img)
	got := mustImgfs(t, nil, "cat", "--passphrase-file", pf, src)
	if !bytes.Equal(got, plain) {
		t.Fatalf("cat over HTTP: %d bytes differ from the %d-byte plaintext", len(got), len(plain))
	}
	r := rand.New(rand.NewPCG(41, 42))
	for i := 0; i < 8; i++ {
		off := r.IntN(len(plain))
		n := 1 + r.IntN(min(len(plain)-off, 3<<20))
		got := mustImgfs(t, nil, "cat", "--passphrase-file", pf, "--block-size", "64K",
			"--offset", fmt.Sprint(off), "--length", fmt.Sprint(n), src)
		if !bytes.Equal(got, plain[off:off+n]) {
			t.Fatalf("range %d+%d differs", off, n)
		}
	}
	info := string(mustImgfs(t, nil, "info", src))
	for _, want := range []string{"LUKS", "kind:", "http", "mode:", "range"} {
		if !strings.Contains(info, want) {
			t.Fatalf("info does not show %q:\n%s", want, info)
		}
	}
}

// Transient faults injected in front of a real file server are retried and
// the plaintext comes out exact; persistent ones end in a clear error.
func TestHTTPFaultsExactOrClearError(t *testing.T) {
	dir := t.TempDir()
	plain := testimg.RandomBytes(4<<20, 43)
	clear(plain[2<<20 : 3<<20])
	img := testimg.ConvertQcow2(t, dir, "img.qcow2", plain, "", testPassphrase, false)
	pf := passFile(t, dir, testPassphrase)
	origin := serveDir(t, dir)
	path := "/" + filepath.Base(img)

	status := func(code int, hdr ...string) func(w http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			for i := 0; i+1 < len(hdr); i += 2 {
				w.Header().Set(hdr[i], hdr[i+1])
			}
			w.WriteHeader(code)
		}
	}
	transient := map[string]func(w http.ResponseWriter, r *http.Request, next http.Handler){
		"connection reset": func(w http.ResponseWriter, _ *http.Request, _ http.Handler) { hijackClose(w, true) },
		"500":              func(w http.ResponseWriter, _ *http.Request, _ http.Handler) { status(500)(w) },
		"503":              func(w http.ResponseWriter, _ *http.Request, _ http.Handler) { status(503)(w) },
		"429 Retry-After":  func(w http.ResponseWriter, _ *http.Request, _ http.Handler) { status(429, "Retry-After", "1")(w) },
		"short body":       truncated,
	}
	for name, f := range transient {
		t.Run(name, func(t *testing.T) {
			u, _ := url.Parse(origin)
			next := httputil.NewSingleHostReverseProxy(u)
			// every third request fails
			proxy, n := faultProxy(t, origin, "", func(i int64, w http.ResponseWriter, r *http.Request) bool {
				if i%3 == 1 {
					f(w, r, next)
					return true
				}
				return false
			})
			r := runImgfs(t, nil, "cat", "--stats", "--block-size", "256K", "--passphrase-file", pf, proxy+path)
			if r.code != 0 || !bytes.Equal(r.stdout, plain) {
				t.Fatalf("exit %d, %d bytes, stderr %s", r.code, len(r.stdout), r.stderr)
			}
			// A reset before any answer on a kept-alive connection may be
			// retried by Go's HTTP transport itself (a GET is replayable),
			// unseen by imgfs's counter; the faults still happened (n).
			retried := !strings.Contains(string(r.stderr), " 0 retries")
			if !strings.Contains(string(r.stderr), "retries") || (!retried && name != "connection reset") {
				t.Fatalf("stats do not show the retries: %s", r.stderr)
			}
			t.Logf("%d requests reached the proxy; %s", n.Load(), r.stderr)
		})
	}

	persistent := []struct {
		name string
		f    func(w http.ResponseWriter, r *http.Request)
		want []string
	}{
		{"403", func(w http.ResponseWriter, _ *http.Request) { status(403)(w) }, []string{"403 Forbidden", "access denied"}},
		{"404", func(w http.ResponseWriter, _ *http.Request) { status(404)(w) }, []string{"404 Not Found"}},
		{"503 forever", func(w http.ResponseWriter, _ *http.Request) { status(503)(w) }, []string{"503", "gave up after"}},
		{"wrong Content-Range", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 1-1/99999999")
			w.Header().Set("Content-Length", "1")
			w.WriteHeader(206)
			w.Write([]byte{0})
		}, []string{"Content-Range"}},
	}
	for _, c := range persistent {
		t.Run(c.name, func(t *testing.T) {
			proxy, _ := faultProxy(t, origin, "", func(_ int64, w http.ResponseWriter, r *http.Request) bool {
				c.f(w, r)
				return true
			})
			r := runImgfs(t, nil, "cat", "--passphrase-file", pf, proxy+path+"?token=SeCrEt")
			mustFail(t, r, append(c.want, proxy+path)...)
			if strings.Contains(string(r.stderr), "SeCrEt") {
				t.Fatalf("the URL's query is printed: %s", r.stderr)
			}
		})
	}

	// 200 with the whole body to every Range request: sequential mode.
	t.Run("200 full body to Range", func(t *testing.T) {
		proxy, _ := faultProxy(t, origin, "", func(_ int64, w http.ResponseWriter, r *http.Request) bool {
			r.Header.Del("Range")
			return false
		})
		got := mustImgfs(t, nil, "cat", "--cache-dir", t.TempDir(), "--passphrase-file", pf, proxy+path)
		if !bytes.Equal(got, plain) {
			t.Fatal("sequential mode: plaintext differs")
		}
		info := string(mustImgfs(t, nil, "info", proxy+path))
		if !strings.Contains(info, "sequential") {
			t.Fatalf("info does not say sequential mode:\n%s", info)
		}
	})
}

// Glance on RBD, Swift or S3 answers 400 to any Range: the proxy in front
// of the real Glance does the same, and imgfs streams the image once.
func TestGlanceWithoutRangeSupportStreams(t *testing.T) {
	tc := needCloud(t)
	dir := t.TempDir()
	plain := testimg.RandomBytes(5<<20, 44)
	img := testimg.QemuLUKS1(t, dir, "img", plain, testPassphrase, testimg.QemuLUKSOpts{})
	id := tc.uploadImage(t, "luks", nil, img)
	file, _ := url.Parse(tc.fileURL(id))
	proxy, n := faultProxy(t, file.Scheme+"://"+file.Host, tc.cloud.Provider.Token(), func(_ int64, w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Range") != "" {
			w.WriteHeader(http.StatusBadRequest)
			return true
		}
		return false
	})
	src := proxy + file.Path
	r := runImgfs(t, nil, "cat", "--stats", "--cache-dir", t.TempDir(), "--passphrase-file", passFile(t, dir, testPassphrase), src)
	if r.code != 0 || !bytes.Equal(r.stdout, plain) {
		t.Fatalf("exit %d, %d bytes, %s", r.code, len(r.stdout), r.stderr)
	}
	if !strings.Contains(string(r.stderr), "sequential mode") {
		t.Fatalf("stats do not show sequential mode: %s", r.stderr)
	}
	if n.Load() > 3 {
		t.Fatalf("%d requests: the image should stream once (probe, 400, GET)", n.Load())
	}
}

// Resets and 503s between imgfs and the real Glance: the plaintext still
// comes out exact.
func TestGlanceThroughFaultyNetwork(t *testing.T) {
	tc := needCloud(t)
	dir := t.TempDir()
	plain := testimg.RandomBytes(3<<20, 45)
	img := testimg.ConvertQcow2(t, dir, "img.qcow2", plain, "", testPassphrase, false)
	id := tc.uploadImage(t, "qcow2", nil, img)
	file, _ := url.Parse(tc.fileURL(id))
	proxy, _ := faultProxy(t, file.Scheme+"://"+file.Host, tc.cloud.Provider.Token(), func(i int64, w http.ResponseWriter, r *http.Request) bool {
		switch i % 4 {
		case 1:
			hijackClose(w, true)
			return true
		case 2:
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	r := runImgfs(t, nil, "cat", "--stats", "--block-size", "256K", "--passphrase-file", passFile(t, dir, testPassphrase), proxy+file.Path)
	if r.code != 0 || !bytes.Equal(r.stdout, plain) {
		t.Fatalf("exit %d, %d bytes, %s", r.code, len(r.stdout), r.stderr)
	}
	t.Logf("%s", r.stderr)
}
