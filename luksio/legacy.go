package luksio

// Legacy algorithms that existing LUKS images may use. x/crypto marks them
// deprecated for new designs; luksio only reads what cryptsetup and qemu-img
// can still create.

import (
	"crypto/cipher"
	"hash"

	//lint:ignore SA1019 qemu-img makes LUKS images with cast5-128.
	"golang.org/x/crypto/cast5"
	//lint:ignore SA1019 LUKS1 headers made by cryptsetup and qemu may name ripemd160.
	"golang.org/x/crypto/ripemd160"
	//lint:ignore SA1019 qemu-img and cryptsetup make LUKS images with twofish.
	"golang.org/x/crypto/twofish"
)

func newRIPEMD160() hash.Hash { return ripemd160.New() }

func newTwofish(k []byte) (cipher.Block, error) { return twofish.NewCipher(k) }

func newCAST5(k []byte) (cipher.Block, error) { return cast5.NewCipher(k) }
