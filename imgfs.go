// Package imgfs opens a disk image — a local file, an http(s) URL or an
// OpenStack Glance image — and gives its plaintext as a blockdev.Device,
// decrypting raw LUKS and qcow2+LUKS in user space and fetching only the
// bytes that are read.
//
// Open is the one entry point: the imgfs command, its FUSE mount and any
// other Go program (a volume backend, an image scanner) build on it.
//
//	img, err := imgfs.Open(ctx, "disk.qcow2", imgfs.Options{Key: keyring.PassphraseFile{Path: "pw"}})
//	if err != nil { ... }
//	defer img.Close()          // zeroes the volume key
//	io.Copy(w, io.NewSectionReader(img.Disk, 0, img.Disk.Size()))
//
// It never guesses: a stated format that disagrees with the image's magic
// is an error, a key given for an unencrypted image is an error, and an
// encrypted image opened without a key is an error, never ciphertext
// presented as the disk.
package imgfs

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/blockdev/rbd"
	"github.com/imgfs/imgfs/blockdev/remote"
	"github.com/imgfs/imgfs/cloud"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
)

// Outer formats, as Info names them and as Options.Format takes them.
const (
	FormatRaw   = "raw"
	FormatLUKS  = "luks"
	FormatQcow2 = "qcow2"
)

// ErrFormatMismatch means the stated format (Options.Format or the Glance
// metadata) and the image's magic disagree.
var ErrFormatMismatch = errors.New("format mismatch")

// Options say how to open an image. The zero value opens an unencrypted
// local file or URL with the defaults.
type Options struct {
	// Format states the outer format: raw, luks or qcow2 ("" = detect).
	// An image whose magic disagrees is refused.
	Format string
	// Key gives the passphrase. It wins over the Barbican key that KeyID
	// or the Glance metadata name. nil means no key was given.
	Key keyring.Source
	// KeyID names a Barbican secret (UUID or href) holding the key; ""
	// means the Glance image's os_encrypt_key_id, else its legacy
	// cinder_encryption_key_id.
	KeyID string
	// NoKey opens the image as plaintext: no key is fetched or used, and
	// an encrypted image is refused with luksio.ErrKeyRequired (imgfs
	// encrypt reads its input this way).
	NoKey bool
	// StoredOnly opens the source and describes the image (Info walks
	// every qcow2 table) without a key: Disk stays nil until OpenDisk.
	StoredOnly bool
	// Unlock limits keyslots and KDF cost.
	Unlock luksio.UnlockOptions
	// Policy relaxes qcow2 safety checks.
	Policy qcowio.Policy

	// Cloud is the clouds.yaml entry for Glance and Barbican; "" means
	// $OS_CLOUD, else the OS_* variables.
	Cloud string
	// Session, if set, is an authenticated session (cloud.Connect) that
	// Glance and Barbican requests use instead of connecting anew: a
	// program opening many images authenticates once.
	Session *cloud.Session
	// HTTP tunes http(s) and Glance sources (stall timeout, cache dir).
	HTTP remote.HTTPOptions
	// Cache tunes the block cache in front of remote sources.
	Cache remote.CacheOptions
	// Ceph says how to reach a Ceph cluster, for rbd:POOL/IMAGE[@SNAP]
	// sources and for Glance images whose location is rbd://. The zero
	// value behaves like the rbd CLI ($CEPH_CONF else /etc/ceph/ceph.conf,
	// client.admin, 30 s timeout).
	Ceph rbd.Config
	// NoDirect reads Glance images over Glance's HTTP API even when their
	// location is on an RBD cluster imgfs could reach.
	NoDirect bool
	// SkipChecksum does not compute the stored image's checksum (Glance's
	// os_hash_value) as its bytes arrive: for readers that do not read the
	// whole image in order to check it at the end, such as a mount, which
	// would otherwise pay the hash (sha512: about a core per 700 MB/s) on
	// every sequential read for nothing. Image.CanVerify is then false.
	SkipChecksum bool

	// FirstRead, when its Length is > 0, is the range of the plaintext
	// disk the caller reads first (imgfs cat: its first chunk). For a raw
	// LUKS image on a remote source it is fetched while the passphrase is
	// awaited and the key derived, so the first read does not wait for a
	// request of its own after the unlock. Small ranges (a few KiB, which a
	// read fetches in a small piece) are not prefetched.
	FirstRead ByteRange

	// WrapStored, if set, wraps the stored image before anything reads
	// it, to count or trace the reads; Stored is then the wrapper.
	WrapStored func(blockdev.Device) blockdev.Device
}

// ByteRange is Length bytes from Offset.
type ByteRange struct{ Offset, Length int64 }

// Info describes an opened image. It never holds key material.
type Info struct {
	Format      string         `json:"format"`
	Encrypted   bool           `json:"encrypted"`
	SourceSize  int64          `json:"source_size"`
	VirtualSize int64          `json:"virtual_size"`
	LUKS        *luksio.Header `json:"luks,omitempty"`
	Qcow2       *qcowio.Info   `json:"qcow2,omitempty"`
	Safe        bool           `json:"safe"`
	Reasons     []string       `json:"reasons,omitempty"`
	// Source is what the source says of itself (kind, URL or Glance
	// metadata, read mode): ids and policies, never secrets.
	Source map[string]any `json:"source,omitempty"`
}

// Image is an opened image.
type Image struct {
	// Info describes the image.
	Info *Info
	// Disk is the plaintext virtual disk (nil with Options.StoredOnly
	// until OpenDisk).
	Disk blockdev.Device
	// Stored is the image as stored: the ciphertext of an encrypted image.
	Stored blockdev.Device

	src     *source
	opts    Options
	enc     luksio.Encrypted
	closers []func() error

	// start is when Open began; ready when Disk was unlocked; firstByte
	// (nanoseconds after start, 0 = not yet) when a read of Disk first
	// returned data; marks the steps in between.
	start     time.Time
	ready     time.Time
	marks     timeline
	firstByte atomic.Int64
}

// Open opens SOURCE — a local file, an http(s):// URL, or a Glance image
// (a UUID that is not a local file, or glance:<id>) — and builds its read
// stack: source → block cache (remote sources) → qcow2 → LUKS. The
// passphrase is fetched only if the image is encrypted and zeroed once
// the volume key is derived; Close zeroes the volume key.
func Open(ctx context.Context, source string, opts Options) (*Image, error) {
	start := time.Now()
	src, err := openSource(ctx, source, opts)
	if err != nil {
		return nil, err
	}
	src.remote = src.dev
	if opts.WrapStored != nil {
		src.dev = opts.WrapStored(src.dev)
	}
	img := &Image{Stored: src.dev, src: src, opts: mergeStated(opts, src), start: start}
	if opts.StoredOnly {
		img.Info, err = inspectDevice(src.dev, img.opts, src.stated)
	} else {
		err = img.OpenDisk(ctx)
	}
	if err != nil {
		src.close()
		if src.directNote != "" {
			// the caller never gets the Image whose DirectNote says why
			return nil, fmt.Errorf("%s: %w (%s)", source, err, src.directNote)
		}
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	img.Info.Source = src.info
	return img, nil
}

// OpenDevice builds the read stack over a Device that is already open (the
// stored image): Format, Key, NoKey, StoredOnly, Unlock and Policy of opts
// apply. Close does not close dev.
func OpenDevice(ctx context.Context, dev blockdev.Device, opts Options) (*Image, error) {
	img := &Image{Stored: dev, src: &source{dev: dev, close: func() error { return nil }}, opts: opts, start: time.Now()}
	var err error
	if opts.StoredOnly {
		img.Info, err = inspectDevice(dev, opts, stated{})
	} else {
		err = img.OpenDisk(ctx)
	}
	if err != nil {
		return nil, err
	}
	return img, nil
}

// OpenDisk unlocks the image and builds the plaintext Disk, after Open
// with StoredOnly. It does nothing if Disk is already open.
func (img *Image) OpenDisk(ctx context.Context) error {
	if img.Disk != nil {
		return nil
	}
	b, err := stack(ctx, img.src.dev, img.opts, img.src.stated)
	if err != nil {
		return err
	}
	if img.Info != nil {
		b.info.Source = img.Info.Source
	}
	img.ready = time.Now()
	img.marks = b.marks
	img.Info, img.Disk, img.enc, img.closers = b.info, img.timed(b.disk), b.enc, append(img.closers, b.closers...)
	return nil
}

// HasKey reports whether a key was given or named (by Options or by the
// image's metadata): whether OpenDisk can unlock an encrypted image.
func (img *Image) HasKey() bool { return !img.opts.NoKey && img.opts.Key != nil }

// Stats returns the counters of a remote source and its cache; ok is
// false for a local file.
func (img *Image) Stats() (st blockdev.Stats, ok bool) {
	if img.src.stats == nil {
		return st, false
	}
	st = img.src.stats()
	ms := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return max(float64(t.Sub(img.start).Microseconds())/1000, 0.001)
	}
	st.TokenMS, st.ReadyMS = ms(img.src.tokenAt), ms(img.ready)
	st.MetadataMS, st.HeaderMS, st.KeyMS = ms(img.src.metadataAt), ms(img.marks.header), ms(img.marks.key)
	if fb := img.firstByte.Load(); fb > 0 {
		st.FirstByteMS = float64(fb/1000) / 1000
	}
	return st, true
}

// timed wraps the plaintext disk so that the first read to return data
// sets img.firstByte (the time to first byte of --stats and of a mount's
// stats file). A Mapper stays a Mapper.
func (img *Image) timed(d blockdev.Device) blockdev.Device {
	t := &timedDevice{Device: d, img: img}
	if m, ok := d.(blockdev.Mapper); ok {
		return &timedMapper{t, m}
	}
	return t
}

// timedDevice records the first read that returns data.
type timedDevice struct {
	blockdev.Device
	img *Image
}

// ReadAt implements io.ReaderAt.
func (t *timedDevice) ReadAt(p []byte, off int64) (int, error) {
	n, err := t.Device.ReadAt(p, off)
	if n > 0 && t.img.firstByte.Load() == 0 {
		t.img.firstByte.CompareAndSwap(0, max(int64(time.Since(t.img.start)), 1))
	}
	return n, err
}

type timedMapper struct {
	*timedDevice
	blockdev.Mapper
}

// Mode is how a remote source reads: "range", "sequential" or "rbd"; ""
// for a local file.
func (img *Image) Mode() string {
	if m, ok := img.src.remote.(remote.ModeReporter); ok {
		return string(m.Mode())
	}
	return ""
}

// DirectNote says why a Glance image whose location is on RBD is read
// over HTTP instead of directly ("" when it is read directly, when it has
// no rbd:// location, or with Options.NoDirect). Callers show it once; Info
// carries the reason in Source["direct"] for every Glance image.
func (img *Image) DirectNote() string { return img.src.directNote }

// CanVerify reports whether the source states a checksum of the stored
// image (Glance's os_hash_value or checksum) that Verify checks.
func (img *Image) CanVerify() bool { return img.src.verify != nil }

// IntegrityWarning is non-empty when the source states a checksum that
// imgfs cannot check (an os_hash_algo Go does not implement): callers say
// so, since a read then is neither verified nor refused.
func (img *Image) IntegrityWarning() string { return img.src.unverified }

// Verify checks the whole stored image against the checksum its source
// states, reading what has not been read yet. It returns an error wrapping
// remote.ErrIntegrity on a mismatch, and nil when there is no checksum.
func (img *Image) Verify(ctx context.Context) error {
	if img.src.verify == nil {
		return nil
	}
	return img.src.verify(ctx)
}

// Close zeroes the keys and closes the read stack and the source.
func (img *Image) Close() error {
	var first error
	for i := len(img.closers) - 1; i >= 0; i-- {
		if err := img.closers[i](); err != nil && first == nil {
			first = err
		}
	}
	img.closers = nil
	if img.src != nil && img.src.close != nil {
		if err := img.src.close(); err != nil && first == nil {
			first = err
		}
		img.src.close = nil
	}
	return first
}
