package imgfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
)

// stated is what a source's metadata says about the image, beside its
// magic: Glance's disk_format, os_encrypt_format and os_decrypt_size.
type stated struct {
	// format is the outer format the metadata states ("" = none).
	format string
	// encrypted is true when the metadata says the image is encrypted;
	// it must then be LUKS or qcow2+LUKS.
	encrypted bool
	// decryptSize is the plaintext size (os_decrypt_size); 0 if none. A
	// raw LUKS payload is whole sectors, so an image of any other size
	// was padded when it was encrypted: the disk is cut to decryptSize
	// when the padding is less than one sector, and a payload shorter
	// than it, or longer by a sector or more, is an error. qcow2 states
	// its own virtual size.
	decryptSize int64
}

// mergeStated adds what the source states to the caller's options: the
// caller's Format wins (a disagreement with the magic is refused later),
// and a key the caller gives wins over the Barbican key the metadata names.
func mergeStated(opts Options, src *source) Options {
	if opts.Format == "" {
		opts.Format = src.stated.format
	}
	if opts.NoKey {
		opts.Key = nil
	} else if opts.Key == nil && src.key != nil {
		opts.Key = src.key
	}
	return opts
}

// luksMagic starts both LUKS1 and LUKS2 headers.
var luksMagic = []byte("LUKS\xba\xbe")

// headSize is how much of the source Detect reads for magic bytes.
const headSize = 512

// Detect returns the outer format of a stored image from its first bytes:
// FormatQcow2, FormatLUKS or FormatRaw.
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

func checkStated(opts Options, st stated, detected string) error {
	want := strings.ToLower(opts.Format)
	if want != "" && want != detected {
		return fmt.Errorf("stated format %q but the image is %s: %w", want, describe(detected), ErrFormatMismatch)
	}
	if st.encrypted && detected == FormatRaw {
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

// inspectDevice describes src without a key and without reading data; a
// qcow2 image's every table is checked. A stated format that disagrees is
// a reason the image is unsafe, not an error.
func inspectDevice(src blockdev.Device, opts Options, st stated) (*Info, error) {
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
	if err := checkStated(opts, st, format); err != nil {
		info.Safe = false
		info.Reasons = append(info.Reasons, err.Error())
	}
	return info, nil
}

// errKeyRequired words luksio.ErrKeyRequired for people.
var errKeyRequired = fmt.Errorf("%w (--passphrase-file, --key-file or a Barbican key)", luksio.ErrKeyRequired)

// built is a plaintext read stack.
type built struct {
	info *Info
	disk blockdev.Device
	// enc is the encrypted layer (nil for plaintext images): its LUKS area
	// and cipher, for re-encryption.
	enc luksio.Encrypted
	// closers release the stack (and zero the volume key) in reverse order.
	closers []func() error
	marks   timeline
}

// timeline is when the steps before the first byte were done (zero: not
// done), for Stats.
type timeline struct {
	header time.Time // the encryption header parsed
	key    time.Time // the passphrase in hand
}

// stack builds the plaintext read stack over src.
func stack(ctx context.Context, src blockdev.Device, opts Options, st stated) (b built, err error) {
	var pk *prefetchedKey
	if opts.Key != nil && !opts.NoKey {
		// The passphrase (a Barbican secret: its own round trips and a
		// token validation) is fetched while the headers and keyslots
		// are read; it is zeroed if the image turns out not to need it.
		pk = prefetchKey(ctx, opts.Key)
		defer pk.discard()
		opts.Key = pk
	}
	var marks timeline
	info, disk, enc, closers, err := buildStack(ctx, src, opts, st, &marks)
	if pk != nil {
		marks.key = pk.fetchedAt()
	}
	return built{info, disk, enc, closers, marks}, err
}

func buildStack(ctx context.Context, src blockdev.Device, opts Options, st stated, marks *timeline) (info *Info, disk blockdev.Device, enc luksio.Encrypted, closers []func() error, err error) {
	format, err := Detect(src)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if err := checkStated(opts, st, format); err != nil {
		return nil, nil, nil, nil, err
	}
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	switch format {
	case FormatRaw:
		if opts.Key != nil {
			return nil, nil, nil, nil, luksio.ErrNotEncrypted
		}
		return &Info{Format: format, SourceSize: src.Size(), VirtualSize: src.Size(), Safe: true}, src, nil, nil, nil
	case FormatLUKS:
		h, err := luksio.ReadHeader(src, src.Size())
		if err != nil {
			return nil, nil, nil, nil, err
		}
		marks.header = time.Now()
		if opts.Key == nil {
			return nil, nil, nil, nil, errKeyRequired
		}
		prefetchFirstRead(src, h, opts.FirstRead)
		key, err := unlockLUKS(ctx, src, h, opts)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		vol, err := luksio.NewVolume(src, h, key)
		key.Close() // NewVolume keeps its own copy of the key schedule
		if err != nil {
			return nil, nil, nil, nil, err
		}
		closers = append(closers, vol.Close)
		disk = vol
		if st.decryptSize > 0 {
			if disk, err = trimPadding(vol, int64(h.SectorSize), st.decryptSize); err != nil {
				closeAll()
				return nil, nil, nil, nil, err
			}
		}
		info = &Info{Format: format, Encrypted: true, SourceSize: src.Size(), VirtualSize: disk.Size(), LUKS: h, Safe: true}
		return info, disk, vol, closers, nil
	default:
		q, err := qcowio.Open(src, opts.Policy)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		marks.header = time.Now()
		closers = append(closers, q.Close)
		qi := q.Info()
		info = &Info{Format: format, Encrypted: q.Encrypted(), SourceSize: src.Size(), VirtualSize: q.Size(),
			Qcow2: qi, LUKS: qi.LUKS, Safe: qi.Safe, Reasons: qi.Reasons}
		switch {
		case q.Encrypted() && opts.Key == nil:
			closeAll()
			return nil, nil, nil, nil, errKeyRequired
		case !q.Encrypted() && opts.Key != nil:
			closeAll()
			return nil, nil, nil, nil, luksio.ErrNotEncrypted
		case q.Encrypted():
			pass, err := opts.Key.Passphrase(ctx)
			if err != nil {
				closeAll()
				return nil, nil, nil, nil, fmt.Errorf("key: %w", err)
			}
			err = q.Unlock(pass, opts.Unlock)
			keyring.Zero(pass)
			if err != nil {
				closeAll()
				return nil, nil, nil, nil, err
			}
		}
		if q.Encrypted() {
			enc = q
		}
		return info, q, enc, closers, nil
	}
}

// unlockLUKS fetches the passphrase and derives the volume key of a raw
// LUKS image; the passphrase is zeroed before it returns.
// While the passphrase is awaited (a Barbican secret is several round
// trips), the key material of the keyslot to try first is read, so that a
// remote source has it in its cache when the unlock asks for it.
func unlockLUKS(ctx context.Context, src blockdev.Device, h *luksio.Header, opts Options) (*luksio.Key, error) {
	warmed := make(chan struct{})
	go func() {
		defer close(warmed)
		warmKeyslot(src, h, opts.Unlock.Slot)
	}()
	pass, err := opts.Key.Passphrase(ctx)
	<-warmed
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	defer keyring.Zero(pass)
	return h.Unlock(src, pass, opts.Unlock)
}

// prefetchFirstRead starts fetching the stored bytes of the plaintext range
// r of a raw LUKS image (the first read the caller will make), when the
// source can prefetch: the request then runs while the passphrase is
// awaited and PBKDF2 runs, instead of after them.
func prefetchFirstRead(src blockdev.Device, h *luksio.Header, r ByteRange) {
	p, ok := src.(blockdev.Prefetcher)
	if !ok || r.Length <= 0 || r.Offset < 0 || r.Offset >= h.PayloadSize {
		return
	}
	p.Prefetch(h.PayloadOffset+r.Offset, min(r.Length, h.PayloadSize-r.Offset))
}

// warmKeyslot reads the key material area of keyslot slot (the first
// active one for luksio.AnySlot) and forgets it: errors are left for the
// unlock to meet and report.
func warmKeyslot(src blockdev.Device, h *luksio.Header, slot int) {
	for _, ks := range h.Keyslots {
		if (slot >= 0 && ks.Index != slot) || (slot < 0 && ks.Priority == 0) {
			continue
		}
		if ks.AreaSize <= 0 || ks.AreaSize > 64<<20 || ks.AreaOffset < 0 || ks.AreaOffset+ks.AreaSize > src.Size() {
			return
		}
		buf := make([]byte, ks.AreaSize)
		_, _ = src.ReadAt(buf, ks.AreaOffset)
		clear(buf) // encrypted key material; cleared all the same
		return
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
