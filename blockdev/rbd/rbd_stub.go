//go:build !(linux && cgo) || noceph

package rbd

import (
	"context"
	"fmt"

	"github.com/imgfs/imgfs/blockdev"
)

// Cluster is a connection to a Ceph cluster. In this build (no cgo, not
// Linux, or tag noceph) Connect always fails with ErrNoCeph.
type Cluster struct{}

// TrimMemory does nothing in this build.
func TrimMemory() {}

// Supported reports whether this build can reach a Ceph cluster (false:
// built without cgo, librbd or with the noceph tag).
const Supported = false

// Connect fails with ErrNoCeph: this imgfs was built without librados and
// librbd.
func Connect(ctx context.Context, cfg Config) (*Cluster, error) {
	return nil, fmt.Errorf("rbd: connect: %w", ErrNoCeph)
}

// FSID returns "" in this build.
func (c *Cluster) FSID() string { return "" }

// OpenImage fails with ErrNoCeph in this build.
func (c *Cluster) OpenImage(pool, image, snap string) (*Image, error) {
	return nil, fmt.Errorf("rbd: open %s: %w", Spec{Pool: pool, Image: image, Snap: snap}.path(), ErrNoCeph)
}

// Close does nothing in this build.
func (c *Cluster) Close() error { return nil }

// Image is an RBD image opened read-only. This build cannot open one.
type Image struct{ spec Spec }

// Size returns 0 in this build.
func (im *Image) Size() int64 { return 0 }

// Spec returns the pool, image and snapshot this Image reads.
func (im *Image) Spec() Spec { return im.spec }

// String returns the image as rbd:POOL/IMAGE[@SNAP].
func (im *Image) String() string { return im.spec.String() }

// Stats returns zero counters in this build.
func (im *Image) Stats() blockdev.Stats { return blockdev.Stats{} }

// ReadAt fails with ErrNoCeph in this build.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("rbd: read: %w", ErrNoCeph)
}

// ReadVecAt fails with ErrNoCeph in this build.
func (im *Image) ReadVecAt(bufs [][]byte, off int64) error {
	return fmt.Errorf("rbd: read: %w", ErrNoCeph)
}

// Close does nothing in this build.
func (im *Image) Close() error { return nil }

// CreateImage fails with ErrNoCeph in this build.
func (c *Cluster) CreateImage(pool, image string, size int64) error {
	return fmt.Errorf("rbd: create %s: %w", Spec{Pool: pool, Image: image}.path(), ErrNoCeph)
}

// RemoveImage fails with ErrNoCeph in this build.
func (c *Cluster) RemoveImage(pool, image string) error {
	return fmt.Errorf("rbd: remove %s: %w", Spec{Pool: pool, Image: image}.path(), ErrNoCeph)
}

// OpenImageWritable fails with ErrNoCeph in this build.
func (c *Cluster) OpenImageWritable(pool, image string) (*Image, error) {
	return nil, fmt.Errorf("rbd: open %s: %w", Spec{Pool: pool, Image: image}.path(), ErrNoCeph)
}

// WriteAt fails with ErrNoCeph in this build.
func (im *Image) WriteAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("rbd: write: %w", ErrNoCeph)
}

// Zero fails with ErrNoCeph in this build.
func (im *Image) Zero(off, n int64) error { return fmt.Errorf("rbd: zero: %w", ErrNoCeph) }

// Flush fails with ErrNoCeph in this build.
func (im *Image) Flush() error { return fmt.Errorf("rbd: flush: %w", ErrNoCeph) }
