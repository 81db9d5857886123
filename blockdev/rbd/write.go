package rbd

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/blockdev/target"
)

// ErrExists means an image to be created exists already (EEXIST).
var ErrExists = errors.New("the image exists already")

var errEEXIST = syscall.EEXIST

// existsError is an EEXIST from librbd: it matches ErrExists and the Errno.
type existsError struct{ err error }

func (e *existsError) Error() string   { return ErrExists.Error() + " (" + e.err.Error() + ")" }
func (e *existsError) Unwrap() []error { return []error{ErrExists, e.err} }

// WriteOptions say how Write writes an image into RBD.
type WriteOptions struct {
	target.Options
	// Existing writes into an image that exists (it must be at least as
	// large as the device; holes are zeroed unless TargetIsZero). Without
	// it the image is created at the device's size, holes are skipped
	// (a new image reads as zeros), and the image is removed again if the
	// write fails.
	Existing bool
}

// Write writes d into the RBD image spec (no snapshot) of the cluster c,
// in place, from offset 0: see WriteOptions. It flushes before returning
// nil; opts.Verify reads the image back.
func Write(ctx context.Context, c *Cluster, spec Spec, d blockdev.Device, opts WriteOptions) (st target.Stats, err error) {
	if spec.Snap != "" {
		return st, fmt.Errorf("rbd: %s: a snapshot is read-only; write to the image (rbd:POOL/IMAGE)", spec)
	}
	if !opts.Existing {
		if err := c.CreateImage(spec.Pool, spec.Image, d.Size()); err != nil {
			if errors.Is(err, ErrExists) {
				return st, fmt.Errorf("%w; use --existing to write into it", err)
			}
			return st, err
		}
		opts.TargetIsZero = true
		defer func() {
			if err != nil {
				if rerr := c.RemoveImage(spec.Pool, spec.Image); rerr != nil {
					err = fmt.Errorf("%w (and the new image could not be removed: %v)", err, rerr)
				} else {
					err = fmt.Errorf("%w; the new image %s was removed", err, spec)
				}
			}
		}()
	}
	im, err := c.OpenImageWritable(spec.Pool, spec.Image)
	if err != nil {
		return st, err
	}
	st, err = target.WriteVolume(ctx, spec.String(), im, d, opts.Options)
	if cerr := im.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return st, err
}
