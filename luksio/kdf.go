package luksio

import (
	"encoding"
	"encoding/binary"
	"hash"

	"golang.org/x/crypto/argon2"
)

// zhmac is HMAC (RFC 2104) whose key-dependent state can be zeroed:
// crypto/hmac keeps the padded key (or the hash states after it) in
// unexported fields that nothing can clear. The padded keys and the saved
// hash states live in slices that destroy zeroes, and destroy scrubs the
// block buffers of both hash states. Only the copies the hash package makes
// on the stack inside Sum remain out of reach.
type zhmac struct {
	inner, outer hash.Hash
	ipad, opad   []byte // key XOR 0x36 and 0x5c, one block each
	// istate and ostate are the marshaled hash states after the pads, when
	// the hash supports it (one block less to hash per HMAC).
	istate, ostate []byte
}

// newZHMAC returns HMAC-newHash keyed with key (not retained).
func newZHMAC(newHash func() hash.Hash, key []byte) *zhmac {
	h := &zhmac{inner: newHash(), outer: newHash()}
	bs := h.inner.BlockSize()
	h.ipad, h.opad = make([]byte, bs), make([]byte, bs)
	if len(key) > bs {
		h.outer.Write(key)
		k := h.outer.Sum(make([]byte, 0, h.outer.Size()))
		copy(h.ipad, k)
		clear(k)
		scrubHash(h.outer)
	} else {
		copy(h.ipad, key)
	}
	copy(h.opad, h.ipad)
	for i := range h.ipad {
		h.ipad[i] ^= 0x36
		h.opad[i] ^= 0x5c
	}
	im, iok := h.inner.(encoding.BinaryMarshaler)
	om, ook := h.outer.(encoding.BinaryMarshaler)
	_, iu := h.inner.(encoding.BinaryUnmarshaler)
	_, ou := h.outer.(encoding.BinaryUnmarshaler)
	if iok && ook && iu && ou {
		h.inner.Write(h.ipad)
		h.outer.Write(h.opad)
		ist, err1 := im.MarshalBinary()
		ost, err2 := om.MarshalBinary()
		if err1 == nil && err2 == nil {
			h.istate, h.ostate = ist, ost
		} else {
			clear(ist)
			clear(ost)
		}
	}
	return h
}

// sum appends HMAC(key, msg...) to dst.
func (h *zhmac) sum(dst []byte, msg ...[]byte) []byte {
	if h.istate != nil {
		// Cannot fail: the states were marshaled by the same hash.
		_ = h.inner.(encoding.BinaryUnmarshaler).UnmarshalBinary(h.istate)
	} else {
		h.inner.Reset()
		h.inner.Write(h.ipad)
	}
	for _, m := range msg {
		h.inner.Write(m)
	}
	n := len(dst)
	dst = h.inner.Sum(dst)
	if h.ostate != nil {
		_ = h.outer.(encoding.BinaryUnmarshaler).UnmarshalBinary(h.ostate)
	} else {
		h.outer.Reset()
		h.outer.Write(h.opad)
	}
	h.outer.Write(dst[n:])
	return h.outer.Sum(dst[:n])
}

// destroy zeroes the padded keys and saved states and scrubs both hashes.
// h must not be used afterwards.
func (h *zhmac) destroy() {
	clear(h.ipad)
	clear(h.opad)
	clear(h.istate)
	clear(h.ostate)
	scrubHash(h.inner)
	scrubHash(h.outer)
}

// scrubHash overwrites the block buffer of h with zeros and resets it: a
// 1-byte write starts the buffer at its first byte, the next BlockSize-1
// bytes fill it, and the block is processed (Go's hashes and ripemd160
// copy partial blocks into their buffer this way).
func scrubHash(h hash.Hash) {
	h.Reset()
	z := make([]byte, h.BlockSize())
	h.Write(z[:1])
	h.Write(z[1:])
	h.Reset()
}

// pbkdf2Key is PBKDF2-HMAC (RFC 8018). It takes the password as bytes (the
// standard library's version wants a string, which cannot be zeroed) and
// zeroes its intermediate buffers and its HMAC state (zhmac) before it
// returns.
func pbkdf2Key(newHash func() hash.Hash, password, salt []byte, iter, keyLen int) []byte {
	prf := newZHMAC(newHash, password)
	defer prf.destroy()
	hLen := prf.inner.Size()
	out := make([]byte, 0, (keyLen+hLen-1)/hLen*hLen)
	var ctr [4]byte
	u := make([]byte, 0, hLen)
	t := make([]byte, hLen)
	for block := uint32(1); len(out) < keyLen; block++ {
		binary.BigEndian.PutUint32(ctr[:], block)
		u = prf.sum(u[:0], salt, ctr[:])
		copy(t, u)
		for n := 1; n < iter; n++ {
			u = prf.sum(u[:0], u)
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
