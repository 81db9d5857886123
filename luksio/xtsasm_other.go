//go:build !amd64

package luksio

// No assembly AES-XTS on this architecture: newFastXTS stays nil and
// SectorCipher uses the portable code in xts.go.
