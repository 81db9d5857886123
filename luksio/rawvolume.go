package luksio

import "github.com/imgfs/imgfs/blockdev"

// Encrypted is what re-encryption needs of an unlocked encrypted image: its
// LUKS header and keyslot area as stored, and the sector cipher of its
// volume key. A raw LUKS Volume and a qcow2+LUKS image both implement it, so
// a copy can keep the same keyslots (and passphrase) in another layout.
type Encrypted interface {
	// LUKSArea is the LUKS header and keyslots as stored; nil if unknown.
	LUKSArea() blockdev.Device
	// SectorCipher encrypts and decrypts with the volume key; nil before
	// the image is unlocked.
	SectorCipher() *SectorCipher
}

// SectorCipher returns the cipher the volume decrypts with (its volume key).
// It belongs to the volume: Close drops it, after which it fails. Callers use
// it only to re-encrypt what they read from the volume elsewhere (a
// qcow2+LUKS copy with the same keyslots).
func (v *Volume) SectorCipher() *SectorCipher { return v.c }

// LUKSArea returns the LUKS header and keyslot area as stored: the bytes
// of the device before the payload.
func (v *Volume) LUKSArea() blockdev.Device {
	s, err := blockdev.NewSection(v.dev, 0, v.off)
	if err != nil { // NewVolume checked that the payload lies inside dev
		return nil
	}
	return s
}
