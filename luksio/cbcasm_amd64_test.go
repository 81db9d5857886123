package luksio

import (
	"bytes"
	"testing"
)

// TestCBCAsmCloseZeroes proves that Close wipes the expanded key.
func TestCBCAsmCloseZeroes(t *testing.T) {
	if newFastCBCDecrypter == nil {
		t.Skip("no assembly AES-CBC on this machine")
	}
	x := newFastCBCDecrypter(bytes.Repeat([]byte{0xa5}, 32)).(*aesniCBC)
	x.close()
	if x.dk != [15 * 16]byte{} {
		t.Fatal("round keys survive close")
	}
}
