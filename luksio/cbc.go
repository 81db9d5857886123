package luksio

import (
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
)

// cbcDecryptSector decrypts one sector in CBC mode. It walks the blocks
// backwards so that dst and src may be the same slice.
func cbcDecryptSector(b cipher.Block, dst, src, iv []byte) {
	bs := len(iv)
	if bs != 16 {
		cbcDecryptSectorGeneric(b, dst, src, iv)
		return
	}
	le := binary.LittleEndian
	var x [16]byte
	for start := len(src) - 16; start >= 0; start -= 16 {
		prev := iv
		if start > 0 {
			prev = src[start-16 : start]
		}
		b.Decrypt(x[:], src[start:start+16])
		le.PutUint64(dst[start:], le.Uint64(x[:8])^le.Uint64(prev[:8]))
		le.PutUint64(dst[start+8:], le.Uint64(x[8:])^le.Uint64(prev[8:16]))
	}
}

// cbcDecryptSectorGeneric handles ciphers with other block sizes (cast5).
func cbcDecryptSectorGeneric(b cipher.Block, dst, src, iv []byte) {
	bs := len(iv)
	for start := len(src) - bs; start >= 0; start -= bs {
		prev := iv
		if start > 0 {
			prev = src[start-bs : start]
		}
		b.Decrypt(dst[start:start+bs], src[start:start+bs])
		subtle.XORBytes(dst[start:start+bs], dst[start:start+bs], prev)
	}
}

// cbcEncryptSector encrypts one sector in CBC mode; dst and src may be the
// same slice.
func cbcEncryptSector(b cipher.Block, dst, src, iv []byte) {
	bs := len(iv)
	prev := iv
	for i := 0; i < len(src); i += bs {
		subtle.XORBytes(dst[i:i+bs], src[i:i+bs], prev)
		b.Encrypt(dst[i:i+bs], dst[i:i+bs])
		prev = dst[i : i+bs]
	}
}
