package luksio

import "golang.org/x/sys/cpu"

// cbcDecryptAsm decrypts groups*8 CBC blocks from src into dst with the
// equivalent-inverse-cipher round keys dk (nr rounds), chaining from the
// 16-byte IV at iv. It loads every ciphertext block of a group before it
// stores, so dst may equal src.
//
//go:noescape
func cbcDecryptAsm(nr int, dk, iv, dst, src *byte, groups int)

func init() {
	if cpu.X86.HasAES && cpu.X86.HasSSE2 {
		newFastCBCDecrypter = newAESNICBC
	}
}

// aesniCBC holds the AES decryption round keys for cbcDecryptAsm.
type aesniCBC struct {
	dk [15 * 16]byte
	nr int
}

func newAESNICBC(key []byte) fastCBCDecrypter {
	if aesRounds(len(key)) == 0 {
		return nil
	}
	var ek [15 * 16]byte
	x := new(aesniCBC)
	x.nr = aesExpandKey(ek[:], key)
	aesDecryptKeys(x.dk[:], ek[:], x.nr)
	clear(ek[:])
	return x
}

func (x *aesniCBC) decryptSector(dst, src, iv []byte) {
	if len(src)%128 != 0 || len(dst) < len(src) || len(iv) != 16 {
		panic("luksio: aesniCBC.decryptSector: bad lengths")
	}
	if len(src) == 0 {
		return
	}
	cbcDecryptAsm(x.nr, &x.dk[0], &iv[0], &dst[0], &src[0], len(src)/128)
}

func (x *aesniCBC) close() {
	clear(x.dk[:])
	x.nr = 0
}
