package imgfs

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/blockdev/remote"
	"github.com/imgfs/imgfs/cloud"
	"github.com/imgfs/imgfs/keyring"
)

// source is an opened SOURCE: the bytes as stored plus what the place they
// came from says about them.
type source struct {
	dev blockdev.Device
	// remote is dev before Options.WrapStored.
	remote blockdev.Device
	// info is Info.Source: never secrets.
	info   map[string]any
	stated stated
	// key is the Barbican secret named by Options.KeyID or the metadata.
	key   keyring.Source
	close func() error
	// stats returns the remote counters; nil for local files.
	stats func() blockdev.Stats
	// verify checks a completely read image against the checksum its
	// metadata states; nil when there is none.
	verify func(ctx context.Context) error
	// unverified says why a checksum the source states cannot be checked.
	unverified string
	// tokenAt is when the cloud token was in hand (zero: no cloud);
	// metadataAt when the image metadata was.
	tokenAt    time.Time
	metadataAt time.Time
	// directNote says why an rbd:// located Glance image is read over HTTP.
	directNote string
}

// IsRemote reports whether SOURCE names a remote image (an http(s) URL,
// an RBD image rbd:POOL/IMAGE[@SNAP] or a Glance image) rather than a
// local file.
func IsRemote(spec string) bool {
	if strings.HasPrefix(spec, "http://") || strings.HasPrefix(spec, "https://") || isRBDSpec(spec) {
		return true
	}
	if _, ok := cloud.GlanceID(spec); ok {
		_, err := os.Stat(spec)
		return err != nil || strings.HasPrefix(spec, "glance:")
	}
	return false
}

// openSource opens SOURCE: an http(s) URL, an RBD image, a Glance image (a
// UUID that is not a local file, or glance:<id>), or a local file.
func openSource(ctx context.Context, spec string, opts Options) (*source, error) {
	var (
		src *source
		err error
	)
	switch {
	case strings.HasPrefix(spec, "http://") || strings.HasPrefix(spec, "https://"):
		src, err = openHTTP(ctx, spec, opts)
	case isRBDSpec(spec):
		src, err = openRBDSpec(ctx, spec, opts)
	case IsRemote(spec):
		id, _ := cloud.GlanceID(spec)
		return openGlance(ctx, id, opts)
	default:
		var f *blockdev.File
		if f, err = blockdev.OpenFile(spec); err == nil {
			src = &source{dev: f, info: map[string]any{"kind": "file", "path": spec}, close: f.Close}
		}
	}
	if err != nil {
		return nil, err
	}
	if opts.KeyID != "" && !opts.NoKey {
		src.key = cloud.BarbicanKey(opts.Cloud, opts.Session, opts.KeyID)
	}
	return src, nil
}

func openHTTP(ctx context.Context, spec string, opts Options) (*source, error) {
	h, err := remote.OpenHTTP(ctx, spec, opts.HTTP)
	if err != nil {
		return nil, err
	}
	cache, err := remote.NewCache(h, opts.Cache)
	if err != nil {
		h.Close()
		return nil, err
	}
	return &source{
		dev:  cache,
		info: map[string]any{"kind": "http", "url": h.Name(), "size": h.Size(), "mode": liveMode{cache}},
		close: func() error {
			cache.Close()
			return h.Close()
		},
		stats: cache.Stats,
	}, nil
}

func openGlance(ctx context.Context, id string, opts Options) (*source, error) {
	sess := opts.Session
	if sess == nil {
		var err error
		if sess, err = cloud.Connect(ctx, opts.Cloud); err != nil {
			return nil, fmt.Errorf("glance image %s: %w", id, err)
		}
	}
	tokenAt := time.Now()
	img, err := sess.GetReadableImage(ctx, id)
	if err != nil {
		return nil, err
	}
	metadataAt := time.Now()
	src, err := openGlanceDirect(ctx, sess, img, opts)
	if err != nil {
		return nil, err
	}
	src.tokenAt, src.metadataAt = tokenAt, metadataAt
	info := src.info
	for k, v := range map[string]any{
		"kind": "glance", "image_id": img.ID, "name": img.Name, "disk_format": img.DiskFormat,
		"container_format": img.ContainerFormat, "status": img.Status, "size": img.Size, "cloud": sess.Name,
	} {
		info[k] = v
	}
	for k := range img.Properties {
		if strings.HasPrefix(k, "os_encrypt_") || strings.HasPrefix(k, "os_decrypt_") || strings.HasPrefix(k, "cinder_encryption_") {
			info[k] = img.Property(k) // ids and policies, never key material
		}
	}
	switch h := img.Hash(); {
	case src.verify != nil:
		info["checksum"] = h.Algo
	case h.Algo != "" && opts.SkipChecksum:
		info["checksum"] = h.Algo + " (not checked while reading; imgfs hash checks it)"
	case h.Algo != "":
		src.unverified = fmt.Sprintf("integrity cannot be checked: Glance's os_hash_algo %q is not supported", h.Algo)
		info["checksum"] = h.Algo + " (not supported: integrity cannot be checked)"
	}
	if src.stated, err = statedByGlance(img); err != nil {
		src.close()
		return nil, err
	}
	if opts.NoKey {
		return src, nil
	}
	keyID := opts.KeyID
	if keyID == "" {
		keyID = img.KeyID()
	}
	if keyID != "" {
		src.key = cloud.BarbicanKey(opts.Cloud, sess, keyID)
	}
	if p, ok := src.dev.(interface{ Preconnect() }); ok && opts.FirstRead.Length > 0 && !opts.StoredOnly &&
		src.stated.format == FormatLUKS && (opts.Key != nil || src.key != nil) {
		// The first read's data will be fetched while the header's
		// connection reads the keyslot (see prefetchFirstRead): a second
		// connection, dialed while the header is read, saves it a round
		// trip.
		p.Preconnect()
	}
	return src, nil
}

// statedByGlance is what a Glance image's metadata says of its bytes.
func statedByGlance(img *cloud.GlanceImage) (stated, error) {
	var st stated
	st.format, st.encrypted = img.Stated()
	if v := img.Property("os_decrypt_size"); v != "" && st.encrypted {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n <= 0 {
			return st, fmt.Errorf("glance image %s: os_decrypt_size %q is not a size in bytes: %w", img.ID, v, remote.ErrRemote)
		}
		st.decryptSize = n
	}
	return st, nil
}

// liveMode shows a remote source's read mode as it is when printed (it
// switches to sequential when the server refuses ranges).
type liveMode struct{ m remote.ModeReporter }

func (l liveMode) String() string { return string(l.m.Mode()) }

// MarshalJSON implements json.Marshaler.
func (l liveMode) MarshalJSON() ([]byte, error) { return json.Marshal(l.String()) }
