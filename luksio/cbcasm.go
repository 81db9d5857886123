package luksio

// Hook for a fast AES-CBC decryption (cbcasm_amd64.go). CBC decryption,
// unlike encryption, has no chain between block decryptions, so eight
// blocks can go through the AES-NI pipeline at once. cbc.go stays the
// reference and the fallback.

// fastCBCDecrypter decrypts whole CBC sectors of a multiple of 128 bytes.
type fastCBCDecrypter interface {
	// decryptSector decrypts one sector from src into dst (the same slice
	// or not overlapping) with the given 16-byte IV.
	decryptSector(dst, src, iv []byte)
	// close zeroes the expanded key.
	close()
}

// newFastCBCDecrypter returns a fastCBCDecrypter for an AES key, or nil if
// this CPU or architecture has no fast implementation or the key does not fit.
var newFastCBCDecrypter func(key []byte) fastCBCDecrypter
