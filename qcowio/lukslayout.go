package qcowio

import (
	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/luksio"
)

// LUKSArea returns the LUKS header area of an encrypted image: the byte
// range the full disk encryption header extension names (a LUKS1 phdr and
// its key material, offsets counted from its start). It is nil for an
// unencrypted image or an unreadable header. luksio.NewRawView copies it to
// present the image as a raw LUKS1 volume with the same keyslots.
func (img *Image) LUKSArea() blockdev.Device { return img.luksArea }

// SectorCipher returns the cipher an unlocked encrypted image decrypts with
// (its volume key), or nil before Unlock and for an unencrypted image. It
// belongs to the image: Close zeroes it, after which it fails. Callers use it
// only to re-encrypt what they read from the image (luksio.NewRawView).
func (img *Image) SectorCipher() *luksio.SectorCipher {
	img.mu.RLock()
	defer img.mu.RUnlock()
	return img.cipher
}
