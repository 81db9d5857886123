//go:build linux && cgo && !noceph

package rbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/blockdev/target"
)

// memDev is a Device over a byte slice; failAt, if positive, fails reads
// that reach it.
type memDev struct {
	b      []byte
	failAt int64
}

func (m memDev) Size() int64 { return int64(len(m.b)) }
func (m memDev) ReadAt(p []byte, off int64) (int, error) {
	if m.failAt > 0 && off+int64(len(p)) > m.failAt {
		return 0, errors.New("source broke")
	}
	n, eof := blockdev.Clip(p, off, int64(len(m.b)))
	copy(p[:n], m.b[off:])
	return n, eof
}

// CreateImage, OpenImageWritable, WriteAt (unaligned, several pieces),
// Zero and Flush: what is written reads back; an existing name is
// ErrExists.
func TestWriteImage(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.user)
	name := fmt.Sprintf("imgfs-write-%d-%d", os.Getpid(), time.Now().UnixNano())
	const size = 6<<20 + 777
	if err := c.CreateImage(cephEnv.pool, name, size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.RemoveImage(cephEnv.pool, name) })
	if err := c.CreateImage(cephEnv.pool, name, size); !errors.Is(err, ErrExists) {
		t.Fatalf("second CreateImage: %v, want ErrExists", err)
	}
	im, err := c.OpenImageWritable(cephEnv.pool, name)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	want := make([]byte, size)
	data := bytes.Repeat([]byte("imgfs rbd "), 400000)[:3<<20+5]
	copy(want[1234:], data)
	if n, err := im.WriteAt(data, 1234); err != nil || n != len(data) {
		t.Fatalf("WriteAt: %d, %v", n, err)
	}
	clear(want[2<<20 : 2<<20+4097])
	if err := im.Zero(2<<20, 4097); err != nil {
		t.Fatal(err)
	}
	if _, err := im.WriteAt([]byte{1}, size); err == nil {
		t.Fatal("a write past the end succeeded")
	}
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if n, err := im.ReadAt(got, 0); n != size || (err != nil && n != size) {
		t.Fatalf("ReadAt: %d, %v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the image differs from what was written")
	}
}

// Write creates the image at the device's size, and removes it again when
// the copy fails; a read-only image (a snapshot) is refused.
func TestWriteCreatesAndRemovesOnFailure(t *testing.T) {
	needCeph(t)
	c := dial(t, cephEnv.user)
	name := fmt.Sprintf("imgfs-write-%d-%d", os.Getpid(), time.Now().UnixNano())
	spec := Spec{Pool: cephEnv.pool, Image: name}
	d := memDev{b: bytes.Repeat([]byte{7}, 9<<20)}
	st, err := Write(context.Background(), c, spec, d, WriteOptions{Options: target.Options{Verify: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.RemoveImage(cephEnv.pool, name) })
	if st.Written != d.Size() {
		t.Fatalf("wrote %d of %d bytes", st.Written, d.Size())
	}
	im, err := c.OpenImage(cephEnv.pool, name, "")
	if err != nil {
		t.Fatal(err)
	}
	if im.Size() != d.Size() {
		t.Fatalf("image of %d bytes, want %d", im.Size(), d.Size())
	}
	im.Close()

	broken := Spec{Pool: cephEnv.pool, Image: name + "-broken"}
	_, err = Write(context.Background(), c, broken, memDev{b: make([]byte, 9<<20), failAt: 5 << 20}, WriteOptions{})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("was removed")) {
		t.Fatalf("failed write: %v", err)
	}
	if _, err := c.OpenImage(broken.Pool, broken.Image, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the image of a failed write was left behind: %v", err)
	}
	if _, err := Write(context.Background(), c, Spec{Pool: cephEnv.pool, Image: name, Snap: "s"}, d, WriteOptions{Existing: true}); err == nil {
		t.Fatal("writing to a snapshot succeeded")
	}
}
