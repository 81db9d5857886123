package imgfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/imgfs/imgfs/keyring"
)

// Digest of a raw LUKS image (made by qemu-img) read over HTTP: the stored
// and plaintext hashes equal those of the file and of the plaintext, and
// the bytes fetched are logged (see Digest's doc).
func TestDigestOverHTTP(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("qemu-img is missing")
		}
		t.Skip("SKIP: qemu-img is missing")
	}
	dir := t.TempDir()
	plain := make([]byte, 24<<20)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range plain {
		plain[i] = byte(r.Uint32())
	}
	raw, img, pf := filepath.Join(dir, "p.raw"), filepath.Join(dir, "img.luks"), filepath.Join(dir, "pass")
	if err := os.WriteFile(raw, plain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pf, []byte("digest-pass"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "luks", "--object", "secret,id=s,data=digest-pass",
			"-o", "key-secret=s,iter-time=10", raw, img).CombinedOutput()
		if err == nil {
			break
		}
		if i > 40 || !strings.Contains(string(out), "accurate CPU usage") {
			t.Fatalf("qemu-img convert: %v: %s", err, out)
		}
	}
	stored, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	files := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		files.ServeHTTP(countingWriter{w, &served}, r)
	}))
	defer srv.Close()
	im, err := Open(context.Background(), srv.URL+"/img.luks", Options{Key: keyring.PassphraseFile{Path: pf}})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	d, err := im.Digest(context.Background(), "sha256")
	if err != nil {
		t.Fatal(err)
	}
	ws, wp := sha256.Sum256(stored), sha256.Sum256(plain)
	if d.Stored != hex.EncodeToString(ws[:]) || d.Plaintext != hex.EncodeToString(wp[:]) {
		t.Fatalf("digests %s / %s, want %x / %x", d.Stored, d.Plaintext, ws, wp)
	}
	t.Logf("served %d bytes for a %d-byte image (%.2f times)", served.Load(), len(stored), float64(served.Load())/float64(len(stored)))
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}
