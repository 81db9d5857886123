package luksio

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// TestCBCAsmMatchesStdlib compares the AES-NI CBC decryption and the
// portable fallback with crypto/cipher's CBC decrypter over random keys of every AES size, IVs,
// sector sizes and sector numbers, in place and not.
func TestCBCAsmMatchesStdlib(t *testing.T) {
	if newFastCBCDecrypter == nil {
		t.Skip("no assembly AES-CBC on this machine")
	}
	r := rand.New(rand.NewPCG(5, 6))
	for iter := range 60 {
		keyLen := []int{16, 24, 32}[iter%3]
		ss := []int{512, 1024, 2048, 4096}[r.IntN(4)]
		key := testimg.RandomBytes(keyLen, r.Uint64())
		ct := testimg.RandomBytes(ss*(1+r.IntN(4)), r.Uint64())
		first := r.Uint64() >> r.IntN(64)
		for _, spec := range []string{"aes-cbc-plain64", "aes-cbc-essiv:sha256", "aes-cbc-plain"} {
			c, err := NewSectorCipher(spec, key, ss)
			if err != nil {
				t.Fatal(err)
			}
			if c.fastCBC == nil {
				t.Fatalf("%s: no assembly decrypter", spec)
			}
			want := make([]byte, len(ct))
			b, _ := aes.NewCipher(key)
			var iv [16]byte
			for i := 0; i < len(ct); i += ss {
				c.sectorIV(iv[:], first+uint64(i/512))
				cipher.NewCBCDecrypter(b, iv[:]).CryptBlocks(want[i:i+ss], ct[i:i+ss])
			}
			got := make([]byte, len(ct))
			if err := c.DecryptSectors(got, ct, first); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("iter %d %s key %d sector %d: differs from crypto/cipher at byte %d", iter, spec, keyLen, ss, firstDiff(got, want))
			}
			// The portable fallback (other CPUs) must agree too.
			portable, err := NewSectorCipher(spec, key, ss)
			if err != nil {
				t.Fatal(err)
			}
			portable.fastCBC.close()
			portable.fastCBC = nil
			if err := portable.DecryptSectors(got, ct, first); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("iter %d %s: portable CBC differs from crypto/cipher at byte %d", iter, spec, firstDiff(got, want))
			}
			portable.Close()
			inplace := bytes.Clone(ct)
			if err := c.DecryptSectors(inplace, inplace, first); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(inplace, want) {
				t.Fatalf("iter %d %s: in-place decryption differs at byte %d", iter, spec, firstDiff(inplace, want))
			}
			// Encryption (portable) must invert the assembly decryption.
			if err := c.EncryptSectors(inplace, inplace, first); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(inplace, ct) {
				t.Fatalf("iter %d %s: encrypt(decrypt(x)) != x", iter, spec)
			}
			c.Close()
		}
	}
}

func ExampleNewSectorCipher() {
	key := bytes.Repeat([]byte{7}, 32)
	c, err := NewSectorCipher("aes-cbc-essiv:sha256", key, 512)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	buf := make([]byte, 1024)
	_ = c.EncryptSectors(buf, buf, 100)
	_ = c.DecryptSectors(buf, buf, 100)
	fmt.Println(bytes.Equal(buf, make([]byte, 1024)))
	// Output: true
}
