//go:build !amd64

package luksio

// No assembly AES-CBC on this architecture: newFastCBCDecrypter stays nil
// and SectorCipher uses the portable code in cbc.go.
