package imgfs

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/imgfs/imgfs/blockdev"
)

// DigestAlgorithms are the algorithms Digest computes, by name.
var DigestAlgorithms = map[string]func() hash.Hash{"sha256": sha256.New, "sha512": sha512.New}

// Digests are the hashes of an image for an evidence record.
type Digests struct {
	Algorithm string `json:"algorithm"`
	// Stored is the hash of the image as stored (the ciphertext of an
	// encrypted image), Plaintext that of the plaintext disk, lowercase hex.
	Stored    string `json:"stored"`
	Plaintext string `json:"plaintext"`
	// StoredSize and PlaintextSize are the bytes hashed.
	StoredSize    int64 `json:"stored_size"`
	PlaintextSize int64 `json:"plaintext_size"`
	// SourceChecksum is the checksum algorithm the source states (Glance's
	// os_hash_algo, or md5), "" if none; SourceVerified is true when the
	// stored image matched it. A mismatch is an error, not a result.
	SourceChecksum string `json:"source_checksum,omitempty"`
	SourceVerified bool   `json:"source_verified"`
	// Warning says why a stated checksum could not be checked.
	Warning string `json:"warning,omitempty"`
}

// Digest reads the whole image once, hashing the stored image and the
// plaintext disk side by side with the named algorithm (see
// DigestAlgorithms), and checks the stored image against the checksum
// its source states (Glance's os_hash_value). The stored image and the
// plaintext are read at the same time through the same block cache, so
// much of a remote image is fetched once for both; the two readers are not
// kept in step, and the cache's drop-behind follows one of them, so some
// blocks are fetched twice (a 26 MiB raw LUKS image over HTTP: 1.0 to 1.6
// times its size in TestDigestOverHTTP).
func (img *Image) Digest(ctx context.Context, algorithm string) (*Digests, error) {
	newHash, ok := DigestAlgorithms[strings.ToLower(algorithm)]
	if !ok {
		return nil, fmt.Errorf("hash algorithm %q: want sha256 or sha512: %w", algorithm, blockdev.ErrUnsupported)
	}
	if img.Disk == nil {
		return nil, fmt.Errorf("digest: the image is not open for reading")
	}
	d := &Digests{Algorithm: strings.ToLower(algorithm), StoredSize: img.Stored.Size(), PlaintextSize: img.Disk.Size(), Warning: img.IntegrityWarning()}
	var stored, plain []byte
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) { stored, err = hashDevice(gctx, img.Stored, newHash()); return err })
	g.Go(func() (err error) { plain, err = hashDevice(gctx, img.Disk, newHash()); return err })
	if err := g.Wait(); err != nil {
		return nil, err
	}
	d.Stored, d.Plaintext = hex.EncodeToString(stored), hex.EncodeToString(plain)
	if img.CanVerify() {
		if err := img.Verify(ctx); err != nil {
			return nil, err
		}
		d.SourceChecksum, _ = img.Info.Source["checksum"].(string)
		d.SourceVerified = true
	}
	return d, nil
}

// hashDevice hashes all of dev in order; holes hash as zeros.
func hashDevice(ctx context.Context, dev blockdev.Device, h hash.Hash) ([]byte, error) {
	var zeros []byte
	err := blockdev.ReadOrdered(ctx, dev, blockdev.OrderedOptions{}, func(_ int64, n int, data []byte) error {
		if data == nil {
			if len(zeros) < n {
				zeros = make([]byte, n)
			}
			data = zeros[:n]
		}
		h.Write(data)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}
