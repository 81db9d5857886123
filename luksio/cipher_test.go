package luksio

import (
	"bytes"
	"crypto/aes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
	"golang.org/x/crypto/xts"
)

// TestXTSMatchesXCrypto compares the tweak-sequence XTS with
// golang.org/x/crypto/xts over random keys, sector numbers, sector sizes
// and lengths, in place and not, serial and parallel.
func TestXTSMatchesXCrypto(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 60 {
		keyLen := []int{32, 48, 64}[r.IntN(3)]
		ss := []int{512, 1024, 2048, 4096}[r.IntN(4)]
		sectors := 1 + r.IntN(8)
		if iter%10 == 0 {
			sectors = parallelMin/ss + r.IntN(64) // parallel path
		}
		first := r.Uint64()
		if iter%3 == 0 {
			first = uint64(r.IntN(1 << 20))
		}
		key := testimg.RandomBytes(keyLen, r.Uint64())
		plain := testimg.RandomBytes(sectors*ss, r.Uint64())

		ref, err := xts.NewCipher(aes.NewCipher, key)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, len(plain))
		for i := 0; i < sectors; i++ {
			ref.Encrypt(want[i*ss:(i+1)*ss], plain[i*ss:(i+1)*ss], first+uint64(i*ss/512))
		}
		c, err := NewSectorCipher("aes-xts-plain64", key, ss)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(plain))
		if err := c.EncryptSectors(got, plain, first); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("iter %d (key %d, sector %d, first %d): encryption differs from x/crypto/xts", iter, keyLen, ss, first)
		}
		// Decrypt in place.
		if err := c.DecryptSectors(got, got, first); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, plain) {
			t.Fatalf("iter %d: in-place decryption does not give the plaintext back", iter)
		}
		// Decrypt into a separate buffer.
		dst := make([]byte, len(want))
		if err := c.DecryptSectors(dst, want, first); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(dst, plain) {
			t.Fatalf("iter %d: decryption differs", iter)
		}
		c.Close()
	}
}

// TestSectorCipherMatchesPython checks every supported AES spec against
// python3-cryptography, including a 4096-byte sector size (IV steps by 8)
// and sector numbers around 2^32 where "plain" wraps and "plain64" does not.
func TestSectorCipherMatchesPython(t *testing.T) {
	testimg.Need(t, testimg.Python)
	cases := []struct {
		spec   string
		keyLen int
		ss     int
		first  uint64
	}{
		{"aes-xts-plain64", 64, 512, 0},
		{"aes-xts-plain64", 32, 512, 1<<32 - 3},
		{"aes-xts-plain64", 64, 4096, 1<<32 - 8},
		{"aes-xts-plain", 64, 512, 1<<32 - 3},
		{"aes-xts-plain", 32, 4096, 1<<32 - 16},
		{"aes-cbc-essiv:sha256", 32, 512, 7},
		{"aes-cbc-essiv:sha256", 16, 4096, 1 << 33},
		{"aes-cbc-plain64", 32, 512, 1<<32 - 2},
		{"aes-cbc-plain64", 24, 2048, 100},
		{"aes-cbc-plain", 16, 512, 1<<32 - 2},
		{"aes-ecb", 32, 512, 5},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%s/%d-byte-key/%d-byte-sectors/first-%d", tc.spec, tc.keyLen, tc.ss, tc.first), func(t *testing.T) {
			t.Parallel()
			key := testimg.RandomBytes(tc.keyLen, uint64(100+i))
			plain := testimg.RandomBytes(6*tc.ss, uint64(200+i))
			want := testimg.PyEncrypt(t, key, tc.spec, tc.ss, tc.first, plain)
			c, err := NewSectorCipher(tc.spec, key, tc.ss)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := make([]byte, len(plain))
			if err := c.DecryptSectors(got, want, tc.first); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("decryption of python ciphertext differs at byte %d", firstDiff(got, plain))
			}
			if err := c.EncryptSectors(got, plain, tc.first); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("encryption differs from python at byte %d", firstDiff(got, want))
			}
		})
	}
}

// TestNewSectorCipherRejects proves that unknown or malformed specs and
// key sizes fail with ErrUnsupportedCipher naming the spec.
func TestNewSectorCipherRejects(t *testing.T) {
	cases := []struct {
		spec   string
		keyLen int
		ss     int
	}{
		{"serpent-xts-plain64", 64, 512},
		{"aes-xts-benbi", 64, 512},
		{"aes-xts-essiv:sha512", 64, 512}, // 64-byte ESSIV key is not an AES key
		{"aes-ctr-plain64", 32, 512},
		{"aes-cbc-essiv:md5", 32, 512},
		{"aes-cbc-essiv:sha512", 32, 512}, // 64-byte ESSIV key is not an AES key
		{"aes-ecb-essiv:sha256", 32, 512},
		{"aes", 32, 512},
		{"aes-xts-plain64-x", 64, 512},
		{"aes-xts-plain64", 40, 512},
		{"aes-xts-plain64", 33, 512},
		{"aes-cbc-plain64", 64, 512},
		{"cast5-xts-plain64", 32, 512}, // XTS needs 16-byte blocks
		{"aes-xts-plain64", 64, 1000},
		{"aes-xts-plain64", 64, 8192},
		{"capi:xts(aes)-plain64", 64, 512},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/%d/%d", tc.spec, tc.keyLen, tc.ss), func(t *testing.T) {
			_, err := NewSectorCipher(tc.spec, make([]byte, tc.keyLen), tc.ss)
			if !errors.Is(err, ErrUnsupportedCipher) {
				t.Fatalf("got %v, want ErrUnsupportedCipher", err)
			}
		})
	}
}

// TestCryptRejectsBadLengths proves that partial sectors and mismatched
// buffers are errors, not silently skipped bytes.
func TestCryptRejectsBadLengths(t *testing.T) {
	c, err := NewSectorCipher("aes-xts-plain64", make([]byte, 64), 4096)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DecryptSectors(make([]byte, 512), make([]byte, 512), 0); err == nil {
		t.Error("512 bytes with a 4096-byte sector: want an error")
	}
	if err := c.DecryptSectors(make([]byte, 4096), make([]byte, 8192), 0); err == nil {
		t.Error("dst shorter than src: want an error")
	}
	c.Close()
	if err := c.DecryptSectors(make([]byte, 4096), make([]byte, 4096), 0); err == nil {
		t.Error("closed cipher: want an error")
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
