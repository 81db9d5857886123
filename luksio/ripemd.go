package luksio

import (
	"hash"

	"golang.org/x/crypto/ripemd160" //nolint:staticcheck // LUKS1 headers made by cryptsetup and qemu may name ripemd160.
)

func newRIPEMD160() hash.Hash { return ripemd160.New() }
