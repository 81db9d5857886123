package luksio

import "golang.org/x/sys/cpu"

//go:generate go run xtsasm_gen.go

// The assembly in xtsasm_amd64.s handles whole sectors of a multiple of 128
// bytes: per sector it encrypts the IV with the tweak key, then runs eight
// blocks at a time through interleaved AESDEC (or AESENC) rounds while it
// doubles the tweak in an SSE register.

//go:noescape
func xtsDecryptAsm(nr int, dk, tk, dst, src *byte, sectors, groups int, sector, step, mask uint64)

//go:noescape
func xtsEncryptAsm(nr int, ek, tk, dst, src *byte, sectors, groups int, sector, step, mask uint64)

func init() {
	if cpu.X86.HasAES && cpu.X86.HasSSE2 {
		newFastXTS = newAESNIXTS
	}
}

// aesniXTS holds the expanded AES-XTS keys for the AES-NI routines.
type aesniXTS struct {
	ek, dk, tk [15 * 16]byte // data encryption, data decryption, tweak encryption round keys
	nr         int           // rounds: 10, 12 or 14
}

// newAESNIXTS expands an AES-XTS key of 32, 48 or 64 bytes; for other
// lengths it returns nil.
func newAESNIXTS(key []byte) fastXTS {
	half := len(key) / 2
	if len(key)%2 != 0 || aesRounds(half) == 0 {
		return nil
	}
	x := new(aesniXTS)
	x.nr = aesExpandKey(x.ek[:], key[:half])
	aesExpandKey(x.tk[:], key[half:])
	aesDecryptKeys(x.dk[:], x.ek[:], x.nr)
	return x
}

func (x *aesniXTS) cryptSectors(dst, src []byte, sectorSize int, sector, step, ivMask uint64, encrypt bool) {
	if sectorSize <= 0 || sectorSize%128 != 0 || len(src)%sectorSize != 0 || len(dst) < len(src) {
		panic("luksio: aesniXTS.cryptSectors: bad sector size or buffer lengths")
	}
	n := len(src) / sectorSize
	if n == 0 {
		return
	}
	if encrypt {
		xtsEncryptAsm(x.nr, &x.ek[0], &x.tk[0], &dst[0], &src[0], n, sectorSize/128, sector, step, ivMask)
	} else {
		xtsDecryptAsm(x.nr, &x.dk[0], &x.tk[0], &dst[0], &src[0], n, sectorSize/128, sector, step, ivMask)
	}
}

func (x *aesniXTS) close() {
	clear(x.ek[:])
	clear(x.dk[:])
	clear(x.tk[:])
	x.nr = 0
}
