package luksio

// AES key schedules in the byte layout that the AES-NI instructions take:
// round key r is bytes 16r..16r+15, each column a big-endian FIPS-197 word.
// crypto/aes keeps its schedule unexported, so the XTS assembly
// (xtsasm_amd64.s) expands its own keys here.

// aesSbox is the AES S-box, computed once from its definition (the
// multiplicative inverse in GF(2^8) followed by the affine map).
var aesSbox = func() (s [256]byte) {
	p, q := byte(1), byte(1)
	for {
		// p *= 3
		hi := p & 0x80
		p ^= p << 1
		if hi != 0 {
			p ^= 0x1b
		}
		// q /= 3
		q ^= q << 1
		q ^= q << 2
		q ^= q << 4
		if q&0x80 != 0 {
			q ^= 0x09
		}
		x := q ^ rotl8(q, 1) ^ rotl8(q, 2) ^ rotl8(q, 3) ^ rotl8(q, 4)
		s[p] = x ^ 0x63
		if p == 1 {
			break
		}
	}
	s[0] = 0x63
	return s
}()

func rotl8(x byte, n uint) byte { return x<<n | x>>(8-n) }

// gfMul multiplies in GF(2^8) modulo x^8+x^4+x^3+x+1.
func gfMul(a, b byte) byte {
	var r byte
	for b != 0 {
		if b&1 != 0 {
			r ^= a
		}
		hi := a & 0x80
		a <<= 1
		if hi != 0 {
			a ^= 0x1b
		}
		b >>= 1
	}
	return r
}

// aesRounds returns the number of rounds for a 16-, 24- or 32-byte key, or
// 0 for any other length.
func aesRounds(keyLen int) int {
	switch keyLen {
	case 16:
		return 10
	case 24:
		return 12
	case 32:
		return 14
	}
	return 0
}

// aesExpandKey writes the encryption round keys of key (16, 24 or 32
// bytes) into enc, which must hold 16*(rounds+1) bytes, and returns the
// number of rounds.
func aesExpandKey(enc []byte, key []byte) int {
	nr := aesRounds(len(key))
	nk := len(key) / 4
	n := 4 * (nr + 1) // words
	_ = enc[4*n-1]
	copy(enc, key)
	rcon := byte(1)
	for i := nk; i < n; i++ {
		var t [4]byte
		copy(t[:], enc[4*(i-1):4*i])
		switch {
		case i%nk == 0:
			t = [4]byte{aesSbox[t[1]] ^ rcon, aesSbox[t[2]], aesSbox[t[3]], aesSbox[t[0]]}
			rcon = gfMul(rcon, 2)
		case nk > 6 && i%nk == 4:
			t = [4]byte{aesSbox[t[0]], aesSbox[t[1]], aesSbox[t[2]], aesSbox[t[3]]}
		}
		for j := range 4 {
			enc[4*i+j] = enc[4*(i-nk)+j] ^ t[j]
		}
	}
	return nr
}

// aesDecryptKeys writes the round keys of the equivalent inverse cipher
// (FIPS-197 5.3.5, the order AESDEC uses) for the encryption schedule enc
// of nr rounds into dec: the encryption keys reversed, with InvMixColumns
// applied to all but the first and last.
func aesDecryptKeys(dec, enc []byte, nr int) {
	_ = enc[16*nr+15]
	_ = dec[16*nr+15]
	copy(dec[:16], enc[16*nr:16*nr+16])
	copy(dec[16*nr:16*nr+16], enc[:16])
	for r := 1; r < nr; r++ {
		src := enc[16*(nr-r) : 16*(nr-r)+16]
		dst := dec[16*r : 16*r+16]
		for c := 0; c < 16; c += 4 {
			a0, a1, a2, a3 := src[c], src[c+1], src[c+2], src[c+3]
			dst[c] = gfMul(a0, 14) ^ gfMul(a1, 11) ^ gfMul(a2, 13) ^ gfMul(a3, 9)
			dst[c+1] = gfMul(a0, 9) ^ gfMul(a1, 14) ^ gfMul(a2, 11) ^ gfMul(a3, 13)
			dst[c+2] = gfMul(a0, 13) ^ gfMul(a1, 9) ^ gfMul(a2, 14) ^ gfMul(a3, 11)
			dst[c+3] = gfMul(a0, 11) ^ gfMul(a1, 13) ^ gfMul(a2, 9) ^ gfMul(a3, 14)
		}
	}
}
