package luksio

import "golang.org/x/sys/cpu"

//go:generate go run xtsasm_gen.go

// The assembly in xtsasm_amd64.s handles whole sectors. Per sector it
// encrypts the IV with the tweak key, then runs the blocks through
// interleaved AESDEC (or AESENC) rounds while it multiplies the tweak in
// vector registers:
//
//   - xts*Asm (AES-NI, SSE2): eight blocks at a time; sectors of a
//     multiple of 128 bytes.
//   - xts*VAES (AVX-512 with VAES and VPCLMULQDQ): 32 blocks at a time in
//     eight ZMM registers, round keys held in registers; sectors of a
//     multiple of 512 bytes.

//go:noescape
func xtsDecryptAsm(nr int, dk, tk, dst, src *byte, sectors, groups int, sector, step, mask uint64)

//go:noescape
func xtsEncryptAsm(nr int, ek, tk, dst, src *byte, sectors, groups int, sector, step, mask uint64)

//go:noescape
func xtsDecryptVAES(nr int, dk, tk, dst, src *byte, sectors, groups int, sector, step, mask uint64)

//go:noescape
func xtsEncryptVAES(nr int, ek, tk, dst, src *byte, sectors, groups int, sector, step, mask uint64)

// haveVAES reports whether the CPU and OS support the xts*VAES routines.
var haveVAES = cpu.X86.HasAES && cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL &&
	cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VAES && cpu.X86.HasAVX512VPCLMULQDQ

func init() {
	if cpu.X86.HasAES && cpu.X86.HasSSE2 {
		newFastXTS = newAESNIXTS
	}
}

// aesniXTS holds the expanded AES-XTS keys for the AES-NI routines.
type aesniXTS struct {
	ek, dk, tk [15 * 16]byte // data encryption, data decryption, tweak encryption round keys
	nr         int           // rounds: 10, 12 or 14
	vaes       bool          // use the AVX-512 VAES routines
}

// newAESNIXTS expands an AES-XTS key of 32, 48 or 64 bytes; for other
// lengths it returns nil.
func newAESNIXTS(key []byte) fastXTS {
	half := len(key) / 2
	if len(key)%2 != 0 || aesRounds(half) == 0 {
		return nil
	}
	x := &aesniXTS{vaes: haveVAES}
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
	switch {
	case x.vaes && sectorSize%512 == 0 && encrypt:
		xtsEncryptVAES(x.nr, &x.ek[0], &x.tk[0], &dst[0], &src[0], n, sectorSize/512, sector, step, ivMask)
	case x.vaes && sectorSize%512 == 0:
		xtsDecryptVAES(x.nr, &x.dk[0], &x.tk[0], &dst[0], &src[0], n, sectorSize/512, sector, step, ivMask)
	case encrypt:
		xtsEncryptAsm(x.nr, &x.ek[0], &x.tk[0], &dst[0], &src[0], n, sectorSize/128, sector, step, ivMask)
	default:
		xtsDecryptAsm(x.nr, &x.dk[0], &x.tk[0], &dst[0], &src[0], n, sectorSize/128, sector, step, ivMask)
	}
}

func (x *aesniXTS) close() {
	clear(x.ek[:])
	clear(x.dk[:])
	clear(x.tk[:])
	x.nr = 0
}
