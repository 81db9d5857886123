package luksio

import (
	"encoding/binary"
	"hash"
)

// afMerge undoes the LUKS anti-forensic split (cryptsetup lib/luks1/af.c):
// the key is the last stripe XORed with the diffusion of all earlier ones.
// src holds stripes*len(dst) bytes.
func afMerge(dst, src []byte, stripes int, newHash func() hash.Hash) {
	n := len(dst)
	buf := make([]byte, n)
	defer clear(buf)
	h := newHash()
	for i := 0; i < stripes-1; i++ {
		xorInto(buf, src[i*n:(i+1)*n])
		diffuse(h, buf)
	}
	last := src[(stripes-1)*n : stripes*n]
	for i := range dst {
		dst[i] = buf[i] ^ last[i]
	}
}

func xorInto(dst, src []byte) {
	for i := range dst {
		dst[i] ^= src[i]
	}
}

// diffuse replaces each digest-sized chunk of buf by H(be32(chunk index) ||
// chunk), truncating the last digest for a partial chunk.
func diffuse(h hash.Hash, buf []byte) {
	ds := h.Size()
	var idx [4]byte
	var sum [64]byte
	for i, off := 0, 0; off < len(buf); i, off = i+1, off+ds {
		end := min(off+ds, len(buf))
		binary.BigEndian.PutUint32(idx[:], uint32(i))
		h.Reset()
		h.Write(idx[:])
		h.Write(buf[off:end])
		d := h.Sum(sum[:0])
		copy(buf[off:end], d)
	}
	clear(sum[:])
}
