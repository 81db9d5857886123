package luksio

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/tests/testimg"
)

// fuzzOpts keeps every KDF cheap so that fuzzing explores parsing and
// unlocking rather than waiting for PBKDF2.
var fuzzOpts = UnlockOptions{Slot: AnySlot, MaxKDFIterations: 2000, MaxKDFMemoryKiB: 64, MaxKDFTime: 4, MaxKDFThreads: 4}

// fuzzSeedImage formats a small image with cryptsetup and returns its
// header and keyslot areas (everything before the payload).
func fuzzSeedImage(f *testing.F, typ string, args ...string) []byte {
	testimg.Need(f, "cryptsetup")
	p := filepath.Join(f.TempDir(), typ+".img")
	testimg.CryptsetupFormat(f, p, 3<<20, "fuzz", append([]string{"--type", typ, "--key-size", "256"}, args...)...)
	b, err := os.ReadFile(p)
	if err != nil {
		f.Fatal(err)
	}
	h, err := ReadHeader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		f.Fatal(err)
	}
	return b[:h.PayloadOffset+4096]
}

// fuzzOpen parses b as an image, and if that works, unlocks it with the
// seed passphrase and reads a little plaintext. It must never panic.
func fuzzOpen(t *testing.T, b []byte) {
	dev := memDevice(b)
	h, err := ReadHeader(dev, dev.Size())
	if err != nil {
		return
	}
	_, _ = ReadHeader(bytes.NewReader(b[:len(b)/2]), int64(len(b)/2))
	k, err := h.Unlock(dev, []byte("fuzz"), fuzzOpts)
	if err != nil {
		return
	}
	defer k.Close()
	v, err := NewVolume(dev, h, k)
	if err != nil {
		return
	}
	p := make([]byte, 1000)
	_, _ = v.ReadAt(p, 100)
	v.Close()
}

type memDevice []byte

func (m memDevice) Size() int64 { return int64(len(m)) }
func (m memDevice) ReadAt(p []byte, off int64) (int, error) {
	n, eof := blockdev.Clip(p, off, int64(len(m)))
	copy(p[:n], m[off:])
	return n, eof
}

// FuzzLUKS1Header feeds mutated LUKS1 headers (seeded from cryptsetup) to
// ReadHeader, Unlock and Volume.
func FuzzLUKS1Header(f *testing.F) {
	f.Add(fuzzSeedImage(f, "luks1", "--pbkdf-force-iterations", "1000", "--hash", "sha256"))
	f.Add(fuzzSeedImage(f, "luks1", "--pbkdf-force-iterations", "1000", "--cipher", "aes-cbc-essiv:sha256", "--hash", "sha1"))
	f.Fuzz(fuzzOpen)
}

// FuzzLUKS2Header feeds mutated LUKS2 headers (seeded from cryptsetup with
// pbkdf2 and argon2id keyslots) to ReadHeader, Unlock and Volume.
func FuzzLUKS2Header(f *testing.F) {
	small := []string{"--offset", "2048", "--luks2-keyslots-size", "512k"}
	f.Add(fuzzSeedImage(f, "luks2", append(small, kdfPBKDF2...)...))
	f.Add(fuzzSeedImage(f, "luks2", append(small, "--pbkdf", "argon2id", "--pbkdf-memory", "32", "--pbkdf-force-iterations", "4", "--sector-size", "4096")...))
	f.Fuzz(fuzzOpen)
}
