package remote

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Every hashlib name Glance may use for os_hash_algo that imgfs supports
// verifies a whole read, with the digest computed by Python's hashlib (an
// independent implementation); a digest off by one bit is a mismatch.
func TestCacheVerifiesEveryGlanceHashAlgorithm(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("SKIP: python3 is needed for reference digests")
	}
	data := testData(1<<20+77, 13)
	p := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, _ := fileServer(t, data)
	for algo := range hashAlgorithms {
		out, err := exec.Command(py, "-c", "import hashlib,sys; print(hashlib.new(sys.argv[1], open(sys.argv[2],'rb').read()).hexdigest())", algo, p).Output()
		if err != nil {
			t.Fatalf("%s: python3 hashlib: %v", algo, err)
		}
		want := strings.TrimSpace(string(out))
		for _, corrupt := range []bool{false, true} {
			value := want
			if corrupt {
				value = flipHex(want)
			}
			h, _ := OpenHTTP(context.Background(), srv.URL+"/image", HTTPOptions{})
			c, err := NewCache(h, CacheOptions{BlockSize: 256 << 10, Hash: HashSpec{algo, value}})
			if err != nil {
				t.Fatalf("%s: %v", algo, err)
			}
			err = c.Verify(context.Background())
			if corrupt != errors.Is(err, ErrIntegrity) || (!corrupt && err != nil) {
				t.Fatalf("%s corrupt=%v: verify %v", algo, corrupt, err)
			}
			c.Close()
			h.Close()
		}
	}
	for _, algo := range []string{"sha3_256", "sha384", "blake2b", "SHA512"} {
		if !(HashSpec{Algo: algo}).Supported() {
			t.Errorf("%s is not supported", algo)
		}
	}
	if (HashSpec{Algo: "shake_128"}).Supported() {
		t.Error("shake_128 (no fixed digest size) claims support")
	}
}

func flipHex(s string) string {
	b := []byte(s)
	if b[0] == '0' {
		b[0] = '1'
	} else {
		b[0] = '0'
	}
	return string(b)
}
