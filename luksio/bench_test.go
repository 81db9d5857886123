package luksio

import (
	"testing"

	"github.com/imgfs/imgfs/tests/testimg"
)

// benchmarkSectors decrypts a 4 MiB buffer in place with one worker and
// with GOMAXPROCS workers (the assembly XTS path is used where available;
// BenchmarkDecryptXTS512/4096 compare it with the portable code).
func benchmarkSectors(b *testing.B, spec string, keyLen, ss int) {
	const size = 4 << 20
	key := testimg.RandomBytes(keyLen, 1)
	for _, mode := range []struct {
		name    string
		workers int
	}{{"serial", 1}, {"parallel", 0}} {
		b.Run(mode.name, func(b *testing.B) {
			c, err := NewSectorCipher(spec, key, ss)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			c.workers = mode.workers
			buf := testimg.RandomBytes(size, 2)
			b.SetBytes(size)
			b.ResetTimer()
			for range b.N {
				if err := c.DecryptSectors(buf, buf, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecryptXTSPlain64Sector512(b *testing.B) {
	benchmarkSectors(b, "aes-xts-plain64", 64, 512)
}

func BenchmarkDecryptXTSPlain64Sector4096(b *testing.B) {
	benchmarkSectors(b, "aes-xts-plain64", 64, 4096)
}

func BenchmarkDecryptCBCESSIV512(b *testing.B) {
	benchmarkSectors(b, "aes-cbc-essiv:sha256", 32, 512)
}

func BenchmarkDecryptCBCPlain64Sector4096(b *testing.B) {
	benchmarkSectors(b, "aes-cbc-plain64", 32, 4096)
}
