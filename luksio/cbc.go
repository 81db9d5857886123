package luksio

import (
	"crypto/cipher"
	"crypto/subtle"
)

// cbcDecryptSector decrypts one sector in CBC mode. It walks the blocks
// backwards so that dst and src may be the same slice.
func cbcDecryptSector(b cipher.Block, dst, src, iv []byte) {
	bs := len(iv)
	for start := len(src) - bs; start >= 0; start -= bs {
		var prev []byte
		if start == 0 {
			prev = iv
		} else {
			prev = src[start-bs : start]
		}
		b.Decrypt(dst[start:start+bs], src[start:start+bs])
		subtle.XORBytes(dst[start:start+bs], dst[start:start+bs], prev)
	}
}

// cbcEncryptSector encrypts one sector in CBC mode; dst and src may be the
// same slice. iv is overwritten.
func cbcEncryptSector(b cipher.Block, dst, src, iv []byte) {
	bs := len(iv)
	prev := iv
	for i := 0; i < len(src); i += bs {
		subtle.XORBytes(dst[i:i+bs], src[i:i+bs], prev)
		b.Encrypt(dst[i:i+bs], dst[i:i+bs])
		prev = dst[i : i+bs]
	}
}
