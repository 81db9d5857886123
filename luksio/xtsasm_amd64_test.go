package luksio

import (
	"bytes"
	"crypto/aes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
	"golang.org/x/crypto/xts"
)

// refXTS encrypts or decrypts sectors of ss bytes with golang.org/x/crypto/xts,
// IV sector numbers first, first+step, ... masked with mask.
func refXTS(t testing.TB, key, src []byte, ss int, first, step, mask uint64, encrypt bool) []byte {
	t.Helper()
	ref, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(src))
	sector := first
	for off := 0; off < len(src); off += ss {
		if encrypt {
			ref.Encrypt(out[off:off+ss], src[off:off+ss], sector&mask)
		} else {
			ref.Decrypt(out[off:off+ss], src[off:off+ss], sector&mask)
		}
		sector += step
	}
	return out
}

// asmVariants lists the assembly variants this CPU can run.
func asmVariants() []int {
	var v []int
	for impl := xtsAESNI; impl <= xtsBestImpl; impl++ {
		v = append(v, impl)
	}
	return v
}

// checkFastXTS compares one call of every assembly variant, in place and
// out of place, with x/crypto/xts.
func checkFastXTS(t testing.TB, key, src []byte, ss int, first, step, mask uint64, encrypt bool) {
	t.Helper()
	want := refXTS(t, key, src, ss, first, step, mask, encrypt)
	for _, impl := range asmVariants() {
		checkAsmVariant(t, impl, key, src, want, ss, first, step, mask, encrypt)
	}
}

func checkAsmVariant(t testing.TB, impl int, key, src, want []byte, ss int, first, step, mask uint64, encrypt bool) {
	t.Helper()
	f := newFastXTS(key)
	if f == nil {
		t.Fatalf("newFastXTS refused a %d-byte key", len(key))
	}
	defer f.close()
	f.(*aesniXTS).impl = impl
	got := make([]byte, len(src))
	f.cryptSectors(got, src, ss, first, step, mask, encrypt)
	if !bytes.Equal(got, want) {
		t.Fatalf("key %d, sector size %d, %d sectors, first %#x, step %d, mask %#x, encrypt %v, impl %d: out-of-place result differs from x/crypto/xts at byte %d",
			len(key), ss, len(src)/ss, first, step, mask, encrypt, impl, firstDiff(got, want))
	}
	copy(got, src)
	f.cryptSectors(got, got, ss, first, step, mask, encrypt)
	if !bytes.Equal(got, want) {
		t.Fatalf("key %d, sector size %d, %d sectors, first %#x, encrypt %v, impl %d: in-place result differs from x/crypto/xts at byte %d",
			len(key), ss, len(src)/ss, first, encrypt, impl, firstDiff(got, want))
	}
}

// TestXTSAsmMatchesXCrypto compares the assembly AES-XTS with
// golang.org/x/crypto/xts for random 32-, 48- and 64-byte keys, sector
// numbers small, near and above 2^32 and near 2^64 (wrapping), "plain" and
// "plain64" masks, every sector size, one to many sectors per call, both
// directions, in place and out of place.
func TestXTSAsmMatchesXCrypto(t *testing.T) {
	needFastXTS(t)
	r := rand.New(rand.NewPCG(3, 4))
	firsts := []uint64{0, 1, 1<<32 - 3, 1 << 32, 1<<40 + 12345, 1<<63 - 1, ^uint64(0) - 2}
	for iter := range 400 {
		keyLen := []int{32, 48, 64}[iter%3]
		ss := []int{512, 4096, 1024, 2048}[r.IntN(4)]
		if iter < 200 {
			ss = []int{512, 4096}[iter%2]
		}
		if iter%20 == 19 {
			// Not LUKS sector sizes, but cryptSectors accepts any multiple
			// of 128 and falls back to the narrower variants.
			ss = []int{128, 256, 384, 640, 768, 1152}[r.IntN(6)]
		}
		sectors := 1 + r.IntN(9)
		if iter%25 == 0 {
			sectors = 64 + r.IntN(64)
		}
		first := r.Uint64()
		if iter%2 == 0 {
			first = firsts[r.IntN(len(firsts))]
		}
		step := uint64(max(ss/ivUnit, 1))
		mask := ^uint64(0)
		if iter%5 == 4 {
			mask = 0xffffffff
		}
		key := testimg.RandomBytes(keyLen, r.Uint64())
		src := testimg.RandomBytes(sectors*ss, r.Uint64())
		checkFastXTS(t, key, src, ss, first, step, mask, iter%4 < 2)
	}
}

// TestXTSAsmCloseZeroes proves that Close wipes the expanded keys: they
// are zeroed, then their locked pages are unmapped (reading them would
// fault), so all that can be checked here is that nothing refers to them.
// lockedFree zeroes before it unmaps; TestKeyMemoryLocked checks the pages.
func TestXTSAsmCloseZeroes(t *testing.T) {
	needFastXTS(t)
	c, err := NewSectorCipher("aes-xts-plain64", testimg.RandomBytes(64, 9), 512)
	if err != nil {
		t.Fatal(err)
	}
	x, ok := c.fast.(*aesniXTS)
	if !ok {
		t.Fatalf("fast path is %T", c.fast)
	}
	if len(x.ek) != 15*16 || len(x.dk) != 15*16 || len(x.tk) != 15*16 || x.buf.b == nil {
		t.Fatal("expanded keys not in their locked buffer")
	}
	c.Close()
	if x.ek != nil || x.dk != nil || x.tk != nil || x.buf.b != nil || x.buf.mem != nil {
		t.Fatal("expanded keys survive Close")
	}
}

// TestAESKeySchedule checks the S-box and the key expansion against the
// FIPS-197 appendix A examples.
func TestAESKeySchedule(t *testing.T) {
	if newFastXTS == nil {
		t.Skip("no assembly AES-XTS")
	}
	if aesSbox[0x00] != 0x63 || aesSbox[0x01] != 0x7c || aesSbox[0x53] != 0xed || aesSbox[0xff] != 0x16 {
		t.Fatalf("S-box wrong: %#x %#x %#x %#x", aesSbox[0], aesSbox[1], aesSbox[0x53], aesSbox[0xff])
	}
	cases := []struct{ key, last string }{
		{"2b7e151628aed2a6abf7158809cf4f3c", "d014f9a8c9ee2589e13f0cc8b6630ca6"},
		{"8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b", "e98ba06f448c773c8ecc720401002202"},
		{"603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", "fe4890d1e6188d0b046df344706c631e"},
	}
	for _, tc := range cases {
		key := unhex(t, tc.key)
		var enc [240]byte
		nr := aesExpandKey(enc[:], key)
		if got := fmt.Sprintf("%x", enc[16*nr:16*nr+16]); got != tc.last {
			t.Errorf("%d-byte key: last round key %s, want %s", len(key), got, tc.last)
		}
	}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b := make([]byte, len(s)/2)
	for i := range b {
		if _, err := fmt.Sscanf(s[2*i:2*i+2], "%02x", &b[i]); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// FuzzXTSAsm compares the assembly AES-XTS with golang.org/x/crypto/xts for
// fuzzed keys, sector numbers, sector sizes, sector counts and data.
func FuzzXTSAsm(f *testing.F) {
	needFastXTS(f)
	f.Add(make([]byte, 64), uint64(0), uint8(0), uint8(1), false, uint64(1))
	f.Add(bytes.Repeat([]byte{0xa5}, 32), uint64(1<<32-1), uint8(3), uint8(3), true, uint64(2))
	f.Add(bytes.Repeat([]byte{0x5a}, 48), ^uint64(0), uint8(1), uint8(9), false, uint64(3))
	f.Fuzz(func(t *testing.T, key []byte, first uint64, sizeSel, count uint8, encrypt bool, seed uint64) {
		switch {
		case len(key) >= 64:
			key = key[:64]
		case len(key) >= 48:
			key = key[:48]
		case len(key) >= 32:
			key = key[:32]
		default:
			key = append(bytes.Repeat([]byte{0x11}, 32-len(key)), key...)
		}
		ss := 512 << (sizeSel % 4)
		sectors := 1 + int(count%16)
		src := testimg.RandomBytes(sectors*ss, seed)
		mask := ^uint64(0)
		if seed&1 != 0 {
			mask = 0xffffffff
		}
		checkFastXTS(t, key, src, ss, first, uint64(ss/ivUnit), mask, encrypt)
	})
}

// benchmarkXTS measures single-worker AES-256-XTS (64-byte key) through
// SectorCipher: one sector per call ("sector") and 1 MiB per call
// ("1MiB"), with the AVX-512 VAES ("vaes512"), AVX2 VAES ("vaes256") and
// AES-NI ("aesni") assembly and the portable ("go") path. Besides the wall-clock MB/s it
// reports cpu-MB/s: bytes per CPU second of the benchmarking thread.
func benchmarkXTS(b *testing.B, ss int, encrypt bool) {
	key := testimg.RandomBytes(64, 1)
	for _, impl := range []string{"vaes512", "vaes256", "aesni", "go"} {
		for _, size := range []int{ss, 1 << 20} {
			name := impl + "/sector"
			if size != ss {
				name = impl + "/1MiB"
			}
			b.Run(name, func(b *testing.B) {
				c, err := NewSectorCipher("aes-xts-plain64", key, ss)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				c.workers = 1
				switch x, _ := c.fast.(*aesniXTS); {
				case impl == "go":
					if x != nil {
						x.close()
						c.fast = nil
					}
				case x == nil, xtsImplByName[impl] > xtsBestImpl:
					b.Skip("not supported on this CPU")
				default:
					x.impl = xtsImplByName[impl]
				}
				buf := testimg.RandomBytes(size, 2)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				b.ResetTimer()
				cpu0 := threadCPUTime()
				var sector uint64
				for range b.N {
					var err error
					if encrypt {
						err = c.EncryptSectors(buf, buf, sector)
					} else {
						err = c.DecryptSectors(buf, buf, sector)
					}
					if err != nil {
						b.Fatal(err)
					}
					sector += uint64(size / ivUnit)
				}
				if cpu := threadCPUTime() - cpu0; cpu0 != 0 && cpu > 0 {
					b.ReportMetric(float64(size)*float64(b.N)/1e6/cpu.Seconds(), "cpu-MB/s")
				}
			})
		}
	}
}

func BenchmarkDecryptXTS512(b *testing.B)  { benchmarkXTS(b, 512, false) }
func BenchmarkDecryptXTS4096(b *testing.B) { benchmarkXTS(b, 4096, false) }
func BenchmarkEncryptXTS4096(b *testing.B) { benchmarkXTS(b, 4096, true) }

var xtsImplByName = map[string]int{"aesni": xtsAESNI, "vaes256": xtsVAES256, "vaes512": xtsVAES512}
