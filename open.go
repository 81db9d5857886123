// Package image detects what an image is (raw, raw LUKS, qcow2, qcow2+LUKS)
// from its magic bytes and the format a caller states, and builds the read
// stack for it: source → qcowio and/or luksio → plaintext Device.
//
// It never guesses: a stated format that disagrees with the magic is an
// error, a key given for an unencrypted image is an error, and an encrypted
// image opened without a key is an error.
package imgfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
)

// Outer formats, as `imgfs info` names them and as --format takes them.
const (
	FormatRaw   = "raw"
	FormatLUKS  = "luks"
	FormatQcow2 = "qcow2"
)

var (
	// ErrFormatMismatch means the stated format and the image's magic disagree.
	ErrFormatMismatch = errors.New("format mismatch")
	// ErrKeyRequired means the image is encrypted and no key was given.
	ErrKeyRequired = errors.New("image is encrypted: a key is required (--passphrase-file, --key-file or a Barbican key)")
	// ErrNotEncrypted means a key was given for an image that is not encrypted.
	ErrNotEncrypted = errors.New("a key was given but the image is not encrypted (a damaged LUKS header is not plaintext)")
)

// Options says how to open an image.
type Options struct {
	// Format is the format the caller states ("" = detect): raw, luks or qcow2.
	// "luks" also accepts qcow2 with LUKS encryption when Encrypted is set by
	// Glance metadata; see StatedEncrypted.
	Format string
	// StatedEncrypted is true when metadata (os_encrypt_format) says the
	// image is encrypted; the image must then be LUKS or qcow2+LUKS.
	StatedEncrypted bool
	// Key yields the passphrase; nil means no key was given.
	Key keyring.Source
	// Unlock limits keyslots and KDF cost.
	Unlock luksio.UnlockOptions
	// Policy relaxes qcow2 safety checks.
	Policy qcowio.Policy
	// DecryptSize is the plaintext size the metadata states (Glance's
	// os_decrypt_size); 0 if none. A raw LUKS payload is whole sectors, so
	// an image of any other size was padded when it was encrypted: the
	// disk is cut to DecryptSize when the padding is less than one sector,
	// and a payload shorter than DecryptSize, or longer by a sector or
	// more, is an error. qcow2 states its own virtual size; DecryptSize is
	// not used for it.
	DecryptSize int64
}

// Info is what `imgfs info` prints. It never holds key material.
type Info struct {
	Format      string         `json:"format"`
	Encrypted   bool           `json:"encrypted"`
	SourceSize  int64          `json:"source_size"`
	VirtualSize int64          `json:"virtual_size"`
	LUKS        *luksio.Header `json:"luks,omitempty"`
	Qcow2       *qcowio.Info   `json:"qcow2,omitempty"`
	Safe        bool           `json:"safe"`
	Reasons     []string       `json:"reasons,omitempty"`
	Source      map[string]any `json:"source,omitempty"`
}

// Image is an opened image: the plaintext disk and the ciphertext as stored.
type Image struct {
	Info *Info
	// Disk is the plaintext virtual disk.
	Disk blockdev.Device
	// Stored is the image as stored (the ciphertext of an encrypted image).
	Stored  blockdev.Device
	closers []func() error
}

// Close releases keys and readers.
func (img *Image) Close() error {
	var first error
	for i := len(img.closers) - 1; i >= 0; i-- {
		if err := img.closers[i](); err != nil && first == nil {
			first = err
		}
	}
	img.closers = nil
	return first
}

// luksMagic starts both LUKS1 and LUKS2 headers.
var luksMagic = []byte("LUKS\xba\xbe")

// headSize is how much of the source Detect reads for magic bytes.
const headSize = 512

// Detect returns the outer format from the first bytes of src.
func Detect(src blockdev.Device) (string, error) {
	head := make([]byte, headSize)
	n, err := src.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read image header: %w", err)
	}
	head = head[:n]
	switch {
	case qcowio.IsQcow2(head):
		return FormatQcow2, nil
	case bytes.HasPrefix(head, luksMagic):
		return FormatLUKS, nil
	default:
		return FormatRaw, nil
	}
}

func checkStated(opts Options, detected string) error {
	stated := strings.ToLower(opts.Format)
	if stated != "" && stated != detected {
		return fmt.Errorf("stated format %q but the image is %s: %w", stated, describe(detected), ErrFormatMismatch)
	}
	if opts.StatedEncrypted && detected == FormatRaw {
		return fmt.Errorf("metadata says the image is encrypted but it has no LUKS or qcow2 header: %w", ErrFormatMismatch)
	}
	return nil
}

func describe(format string) string {
	switch format {
	case FormatQcow2:
		return "qcow2 (magic QFI\\xfb)"
	case FormatLUKS:
		return "LUKS (magic LUKS\\xba\\xbe)"
	}
	return "raw (no known magic)"
}

// Inspect describes src without a key and without reading data.
func Inspect(src blockdev.Device, opts Options) (*Info, error) {
	format, err := Detect(src)
	if err != nil {
		return nil, err
	}
	info := &Info{Format: format, SourceSize: src.Size(), Safe: true}
	switch format {
	case FormatQcow2:
		qi, err := qcowio.Inspect(src, opts.Policy)
		if err != nil {
			return nil, err
		}
		info.Qcow2 = qi
		info.LUKS = qi.LUKS
		info.Encrypted = qi.Encryption != "none"
		info.VirtualSize = qi.VirtualSize
		info.Safe, info.Reasons = qi.Safe, qi.Reasons
	case FormatLUKS:
		h, err := luksio.ReadHeader(src, src.Size())
		if err != nil {
			return nil, err
		}
		info.LUKS = h
		info.Encrypted = true
		info.VirtualSize = h.PayloadSize
	default:
		info.VirtualSize = src.Size()
	}
	if err := checkStated(opts, format); err != nil {
		info.Safe = false
		info.Reasons = append(info.Reasons, err.Error())
	}
	return info, nil
}

// Open builds the read stack for src. The passphrase is fetched only if the
// image is encrypted and zeroed as soon as the volume key is derived.
func Open(ctx context.Context, src blockdev.Device, opts Options) (*Image, error) {
	format, err := Detect(src)
	if err != nil {
		return nil, err
	}
	if err := checkStated(opts, format); err != nil {
		return nil, err
	}
	img := &Image{Stored: src}
	switch format {
	case FormatRaw:
		if opts.Key != nil {
			return nil, ErrNotEncrypted
		}
		img.Disk = src
		img.Info = &Info{Format: format, SourceSize: src.Size(), VirtualSize: src.Size(), Safe: true}
		return img, nil
	case FormatLUKS:
		h, err := luksio.ReadHeader(src, src.Size())
		if err != nil {
			return nil, err
		}
		if opts.Key == nil {
			return nil, ErrKeyRequired
		}
		pass, err := opts.Key.Passphrase(ctx)
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		key, err := h.Unlock(src, pass, opts.Unlock)
		keyring.Zero(pass)
		if err != nil {
			return nil, err
		}
		vol, err := luksio.NewVolume(src, h, key)
		if err != nil {
			key.Close()
			return nil, err
		}
		img.closers = append(img.closers, vol.Close)
		img.Disk = vol
		if opts.DecryptSize > 0 {
			if img.Disk, err = trimPadding(vol, int64(h.SectorSize), opts.DecryptSize); err != nil {
				img.Close()
				return nil, err
			}
		}
		img.Info = &Info{Format: format, Encrypted: true, SourceSize: src.Size(), VirtualSize: img.Disk.Size(), LUKS: h, Safe: true}
		return img, nil
	default:
		q, err := qcowio.Open(src, opts.Policy)
		if err != nil {
			return nil, err
		}
		img.closers = append(img.closers, q.Close)
		qi := q.Info()
		img.Info = &Info{Format: format, Encrypted: q.Encrypted(), SourceSize: src.Size(), VirtualSize: q.Size(),
			Qcow2: qi, LUKS: qi.LUKS, Safe: qi.Safe, Reasons: qi.Reasons}
		switch {
		case q.Encrypted() && opts.Key == nil:
			img.Close()
			return nil, ErrKeyRequired
		case !q.Encrypted() && opts.Key != nil:
			img.Close()
			return nil, ErrNotEncrypted
		case q.Encrypted():
			pass, err := opts.Key.Passphrase(ctx)
			if err != nil {
				img.Close()
				return nil, fmt.Errorf("key: %w", err)
			}
			err = q.Unlock(pass, opts.Unlock)
			keyring.Zero(pass)
			if err != nil {
				img.Close()
				return nil, err
			}
		}
		img.Disk = q
		return img, nil
	}
}

// trimPadding cuts the sector padding off a LUKS payload whose plaintext
// size the metadata states.
func trimPadding(vol blockdev.Device, sector, stated int64) (blockdev.Device, error) {
	payload := vol.Size()
	switch {
	case stated > payload:
		return nil, fmt.Errorf("os_decrypt_size says %d bytes but the LUKS payload holds %d: %w", stated, payload, blockdev.ErrTruncated)
	case payload-stated >= max(sector, 512):
		return nil, fmt.Errorf("os_decrypt_size says %d bytes but the LUKS payload holds %d, more than one %d-byte sector of padding: %w",
			stated, payload, max(sector, 512), blockdev.ErrCorrupt)
	case stated == payload:
		return vol, nil
	}
	return blockdev.NewSection(vol, 0, stated)
}
