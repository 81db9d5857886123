package qcowio

import (
	"fmt"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/luksio"
)

// maxLUKSAreaBytes bounds the LUKS header area named by the crypto header
// extension (a LUKS1 header with eight key slots of 4000 stripes of a 512-bit
// key takes about 2 MiB).
const maxLUKSAreaBytes = 64 << 20

// readLUKSHeader parses the LUKS header in the crypto header extension's
// area, recording problems in v.
func (img *Image) readLUKSHeader(v *verdict) {
	h := img.hdr
	switch {
	case h.cryptoLength > maxLUKSAreaBytes:
		v.add(blockdev.ErrUnsupported, "LUKS header area of %d bytes exceeds the limit %d", h.cryptoLength, maxLUKSAreaBytes)
		return
	case !inFile(h.cryptoOffset, h.cryptoLength, img.fileSize):
		v.add(blockdev.ErrTruncated, "LUKS header area at %#x (%d bytes) outside the file (%d bytes)", h.cryptoOffset, h.cryptoLength, img.fileSize)
		return
	}
	area, err := blockdev.NewSection(img.dev, int64(h.cryptoOffset), int64(h.cryptoLength))
	if err != nil {
		v.add(blockdev.ErrTruncated, "LUKS header area: %v", err)
		return
	}
	lh, err := luksio.ReadHeader(area, area.Size())
	if err != nil {
		v.add(blockdev.ErrCorrupt, "LUKS header: %v", err)
		return
	}
	img.luksArea, img.luksHdr = area, lh
	img.info.LUKS = lh
}

// Unlock opens the embedded LUKS header with the passphrase. Reads of an
// encrypted image before Unlock fail with luksio.ErrKeyRequired. Unlock on an
// unencrypted image fails with luksio.ErrNotEncrypted: a key given for such an image
// must not be silently ignored. A wrong passphrase yields an error wrapping
// luksio.ErrWrongPassphrase.
func (img *Image) Unlock(passphrase []byte, opts luksio.UnlockOptions) error {
	if !img.encrypted {
		return fmt.Errorf("qcow2: unlock: %w", luksio.ErrNotEncrypted)
	}
	if img.luksHdr == nil {
		return fmt.Errorf("qcow2: unlock: no readable LUKS header: %w", blockdev.ErrCorrupt)
	}
	key, err := img.luksHdr.Unlock(img.luksArea, passphrase, opts)
	if err != nil {
		return fmt.Errorf("qcow2: unlock: %w", err)
	}
	// The cipher keeps its own key schedule; the volume key itself is
	// zeroed at once.
	c, err := key.Cipher()
	key.Close()
	if err != nil {
		return fmt.Errorf("qcow2: unlock: %w", err)
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.closed {
		c.Close()
		return errClosed
	}
	img.dropKeyLocked()
	img.cipher = c
	return nil
}

// dropKeyLocked zeroes and forgets the cipher's key; img.mu must be held.
func (img *Image) dropKeyLocked() {
	if img.cipher != nil {
		img.cipher.Close()
		img.cipher = nil
	}
}

// readStateLocked returns the cipher to decrypt with (nil for an unencrypted
// image), or the reason reads are impossible. img.mu must be read-locked
// for as long as the cipher is used, so that Close cannot zero it mid-read.
func (img *Image) readStateLocked() (*luksio.SectorCipher, error) {
	switch {
	case img.closed:
		return nil, errClosed
	case !img.encrypted:
		return nil, nil
	case img.cipher == nil:
		return nil, luksio.ErrKeyRequired
	}
	return img.cipher, nil
}
