package luksio

import (
	"crypto/hmac"
	"encoding/binary"
	"hash"

	"golang.org/x/crypto/argon2"
)

// pbkdf2Key is PBKDF2-HMAC (RFC 8018). It takes the password as bytes (the
// standard library's version wants a string, which cannot be zeroed) and
// zeroes its own intermediate buffers.
func pbkdf2Key(newHash func() hash.Hash, password, salt []byte, iter, keyLen int) []byte {
	prf := hmac.New(newHash, password)
	hLen := prf.Size()
	out := make([]byte, 0, (keyLen+hLen-1)/hLen*hLen)
	var ctr [4]byte
	u := make([]byte, 0, hLen)
	t := make([]byte, hLen)
	for block := uint32(1); len(out) < keyLen; block++ {
		binary.BigEndian.PutUint32(ctr[:], block)
		prf.Reset()
		prf.Write(salt)
		prf.Write(ctr[:])
		u = prf.Sum(u[:0])
		copy(t, u)
		for n := 1; n < iter; n++ {
			prf.Reset()
			prf.Write(u)
			u = prf.Sum(u[:0])
			for i := range t {
				t[i] ^= u[i]
			}
		}
		out = append(out, t...)
	}
	clear(u[:cap(u)])
	clear(t)
	clear(out[keyLen:])
	return out[:keyLen]
}

// argon2Key runs argon2i or argon2id (version 0x13, as cryptsetup uses).
func argon2Key(id bool, password, salt []byte, time, memKiB uint32, threads uint8, keyLen uint32) []byte {
	if id {
		return argon2.IDKey(password, salt, time, memKiB, threads, keyLen)
	}
	return argon2.Key(password, salt, time, memKiB, threads, keyLen)
}
