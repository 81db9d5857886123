//go:build !unix

package luksio

// lockedAlloc returns n zeroed bytes of heap memory: memory locking is
// implemented for unix systems only.
func lockedAlloc(n int) (b, mem []byte) { return make([]byte, n), nil }

// lockedFree zeroes b.
func lockedFree(b, _ []byte) { clear(b) }
