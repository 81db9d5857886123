package luksio

// SectorCipher returns the cipher the volume decrypts with (its volume key).
// It belongs to the volume: Close drops it, after which it fails. Callers use
// it only to re-encrypt what they read from the volume elsewhere (a
// qcow2+LUKS copy with the same keyslots).
func (v *Volume) SectorCipher() *SectorCipher { return v.c }
