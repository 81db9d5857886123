package luksio

import (
	"bytes"
	stdpbkdf2 "crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"testing"

	xpbkdf2 "golang.org/x/crypto/pbkdf2"

	"github.com/imgfs/imgfs/tests/testimg"
)

// TestPBKDF2RFC6070 checks pbkdf2Key (with its zeroable HMAC) against the
// PBKDF2-HMAC-SHA1 vectors of RFC 6070 (all but the 16777216-iteration one).
func TestPBKDF2RFC6070(t *testing.T) {
	for _, v := range []struct {
		p, s string
		c, n int
		want string
	}{
		{"password", "salt", 1, 20, "0c60c80f961f0e71f3a9b524af6012062fe037a6"},
		{"password", "salt", 2, 20, "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"},
		{"password", "salt", 4096, 20, "4b007901b765489abead49d926f721d065a429c1"},
		{"passwordPASSWORDpassword", "saltSALTsaltSALTsaltSALTsaltSALTsalt", 4096, 25, "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038"},
		{"pass\x00word", "sa\x00lt", 4096, 16, "56fa6aa75548099dcc37d7f03425e0c3"},
	} {
		got := hex.EncodeToString(pbkdf2Key(sha1.New, []byte(v.p), []byte(v.s), v.c, v.n))
		if got != v.want {
			t.Errorf("PBKDF2-SHA1(%q, %q, %d, %d) = %s, want %s", v.p, v.s, v.c, v.n, got, v.want)
		}
	}
}

// TestPBKDF2MatchesReference compares pbkdf2Key with golang.org/x/crypto's
// and the standard library's PBKDF2 for every hash LUKS headers name,
// passwords shorter and longer than the hash block (the latter are hashed
// first), and output lengths that span several blocks.
func TestPBKDF2MatchesReference(t *testing.T) {
	hashes := map[string]func() hash.Hash{
		"sha1": sha1.New, "sha256": sha256.New, "sha512": sha512.New, "sha384": sha512.New384,
		"sha224": sha256.New224, "ripemd160": newRIPEMD160,
	}
	for name, newHash := range hashes {
		for _, pl := range []int{0, 1, 32, 64, 65, 128, 129, 300} {
			for _, n := range []int{16, 20, 32, 64, 100} {
				pass := testimg.RandomBytes(pl, uint64(pl))
				salt := testimg.RandomBytes(32, uint64(n))
				got := pbkdf2Key(newHash, pass, salt, 7, n)
				x := xpbkdf2.Key(pass, salt, 7, n, newHash)
				if !bytes.Equal(got, x) {
					t.Fatalf("%s password %d bytes, key %d bytes: differs from x/crypto/pbkdf2", name, pl, n)
				}
				if name == "ripemd160" {
					continue // not a standard library hash
				}
				std, err := stdpbkdf2.Key(newHash, string(pass), salt, 7, n)
				if err != nil || !bytes.Equal(got, std) {
					t.Fatalf("%s password %d bytes, key %d bytes: differs from crypto/pbkdf2 (%v)", name, pl, n, err)
				}
			}
		}
	}
}

// TestZHMACDestroyZeroes proves that the HMAC of pbkdf2Key leaves no key
// material behind: after destroy its padded keys (key XOR ipad/opad) and
// the hash states saved after them are zero, and its hashes start afresh.
func TestZHMACDestroyZeroes(t *testing.T) {
	for _, kl := range []int{20, 200} { // a short key, and one hashed first
		for name, newHash := range map[string]func() hash.Hash{"sha256": sha256.New, "sha512": sha512.New, "ripemd160": newRIPEMD160} {
			t.Run(fmt.Sprintf("%s/key%d", name, kl), func(t *testing.T) {
				key := testimg.RandomBytes(kl, 5)
				h := newZHMAC(newHash, key)
				mac := h.sum(nil, []byte("message"))
				ref := newZHMAC(newHash, key)
				if !bytes.Equal(mac, ref.sum(nil, []byte("message"))) {
					t.Fatal("HMAC is not deterministic")
				}
				owned := [][]byte{h.ipad, h.opad}
				if name != "ripemd160" { // x/crypto's ripemd160 does not marshal its state
					if h.istate == nil {
						t.Fatalf("%s: no saved states (the hash marshals its state)", name)
					}
					owned = append(owned, h.istate, h.ostate)
				}
				for i, b := range owned {
					if allZeroBytes(b) {
						t.Fatalf("buffer %d is zero before destroy: the test proves nothing", i)
					}
				}
				h.destroy()
				for i, b := range owned {
					if !allZeroBytes(b) {
						t.Errorf("buffer %d (ipad, opad, inner state, outer state) not zeroed: %x", i, b)
					}
				}
				fresh := newHash()
				for _, hh := range []hash.Hash{h.inner, h.outer} {
					if !bytes.Equal(hh.Sum(nil), fresh.Sum(nil)) {
						t.Error("hash state not reset")
					}
				}
			})
		}
	}
}
