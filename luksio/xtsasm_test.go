package luksio

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

func needFastXTS(t testing.TB) {
	t.Helper()
	if newFastXTS == nil {
		t.Skip("no assembly AES-XTS on this CPU or architecture")
	}
}

// TestXTSAsmSectorCipher checks that SectorCipher takes the assembly path
// for AES-XTS and that it agrees with the portable path (xts.go) through
// the public API, including the parallel split and "plain" wrapping.
func TestXTSAsmSectorCipher(t *testing.T) {
	needFastXTS(t)
	r := rand.New(rand.NewPCG(5, 6))
	for iter := range 24 {
		spec := []string{"aes-xts-plain64", "aes-xts-plain"}[iter%2]
		keyLen := []int{32, 64, 48}[iter%3]
		ss := []int{512, 4096}[iter/2%2]
		sectors := 1 + r.IntN(16)
		if iter%6 == 5 {
			sectors = parallelMin/ss + 3
		}
		first := 1<<32 - uint64(r.IntN(64)*ss/ivUnit) - 1
		key := testimg.RandomBytes(keyLen, r.Uint64())
		plain := testimg.RandomBytes(sectors*ss, r.Uint64())
		fast, err := NewSectorCipher(spec, key, ss)
		if err != nil {
			t.Fatal(err)
		}
		if fast.fast == nil {
			t.Fatalf("%s with a %d-byte key did not take the assembly path", spec, keyLen)
		}
		slow, err := NewSectorCipher(spec, key, ss)
		if err != nil {
			t.Fatal(err)
		}
		slow.fast.close()
		slow.fast = nil
		a, b := make([]byte, len(plain)), make([]byte, len(plain))
		if err := fast.EncryptSectors(a, plain, first); err != nil {
			t.Fatal(err)
		}
		if err := slow.EncryptSectors(b, plain, first); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("iter %d %s: assembly and portable encryption differ at byte %d", iter, spec, firstDiff(a, b))
		}
		if err := fast.DecryptSectors(a, a, first); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, plain) {
			t.Fatalf("iter %d %s: assembly decryption does not give the plaintext back", iter, spec)
		}
		fast.Close()
		slow.Close()
	}
}

// TestXTSAsmNoAlloc proves that the assembly path allocates nothing per
// call below the parallel threshold.
func TestXTSAsmNoAlloc(t *testing.T) {
	needFastXTS(t)
	c, err := NewSectorCipher("aes-xts-plain64", testimg.RandomBytes(64, 3), 512)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := testimg.RandomBytes(64<<10, 4)
	var sector uint64
	allocs := testing.AllocsPerRun(100, func() {
		if err := c.DecryptSectors(buf, buf, sector); err != nil {
			t.Fatal(err)
		}
		if err := c.EncryptSectors(buf, buf, sector); err != nil {
			t.Fatal(err)
		}
		sector += 128
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per call, want 0", allocs)
	}
}
