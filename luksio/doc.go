// Package luksio reads LUKS1 and LUKS2 volumes in user space: it parses the
// on-disk headers, unlocks the volume key from a passphrase, and decrypts the
// payload with a sector cipher (aes-xts-plain64, aes-cbc-essiv:sha256, ...).
//
// It knows nothing about qcow2 or HTTP. Raw LUKS images are read through a
// Volume (a blockdev.Device over the plaintext payload); qcow2 images with
// native LUKS encryption use Header.Unlock and Key.Cipher directly with their
// own IV sector numbers.
package luksio
