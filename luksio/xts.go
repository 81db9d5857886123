package luksio

import (
	"crypto/cipher"
	"encoding/binary"
)

// XTS (IEEE P1619) over one sector: the tweak is the encrypted IV, multiplied
// by x in GF(2^128) for every 16-byte block. The tweak is kept in two uint64
// words so that the multiplication needs no byte loop; every block is one
// call into the (AES-NI) block cipher.

// xtsMul2 multiplies the little-endian 128-bit tweak (lo, hi) by x.
func xtsMul2(lo, hi uint64) (uint64, uint64) {
	carry := hi >> 63
	hi = hi<<1 | lo>>63
	lo = lo<<1 ^ (carry * 0x87)
	return lo, hi
}

func xtsDecryptSector(data, tweak cipher.Block, dst, src []byte, iv *[16]byte) {
	var t [16]byte
	tweak.Encrypt(t[:], iv[:])
	lo, hi := binary.LittleEndian.Uint64(t[:8]), binary.LittleEndian.Uint64(t[8:])
	var x [16]byte
	for i := 0; i+16 <= len(src); i += 16 {
		binary.LittleEndian.PutUint64(x[:8], binary.LittleEndian.Uint64(src[i:])^lo)
		binary.LittleEndian.PutUint64(x[8:], binary.LittleEndian.Uint64(src[i+8:])^hi)
		data.Decrypt(x[:], x[:])
		binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(x[:8])^lo)
		binary.LittleEndian.PutUint64(dst[i+8:], binary.LittleEndian.Uint64(x[8:])^hi)
		lo, hi = xtsMul2(lo, hi)
	}
}

func xtsEncryptSector(data, tweak cipher.Block, dst, src []byte, iv *[16]byte) {
	var t [16]byte
	tweak.Encrypt(t[:], iv[:])
	lo, hi := binary.LittleEndian.Uint64(t[:8]), binary.LittleEndian.Uint64(t[8:])
	var x [16]byte
	for i := 0; i+16 <= len(src); i += 16 {
		binary.LittleEndian.PutUint64(x[:8], binary.LittleEndian.Uint64(src[i:])^lo)
		binary.LittleEndian.PutUint64(x[8:], binary.LittleEndian.Uint64(src[i+8:])^hi)
		data.Encrypt(x[:], x[:])
		binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(x[:8])^lo)
		binary.LittleEndian.PutUint64(dst[i+8:], binary.LittleEndian.Uint64(x[8:])^hi)
		lo, hi = xtsMul2(lo, hi)
	}
}
