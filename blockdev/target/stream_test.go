package target

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
)

type memDevice []byte

func (m memDevice) ReadAt(p []byte, off int64) (int, error) {
	n, err := blockdev.Clip(p, off, int64(len(m)))
	copy(p[:n], m[off:])
	return n, err
}
func (m memDevice) Size() int64 { return int64(len(m)) }

func TestCopyRangeCancelledIsAnError(t *testing.T) {
	dev := make(memDevice, 64<<20)
	for i := range dev {
		dev[i] = byte(i*7 + 1)
	}
	out, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Stream(ctx, out, dev, true, nil); err == nil {
		t.Fatal("a cancelled copy reported success")
	}
}

func TestCopyRangeSparseAndExact(t *testing.T) {
	dev := make(memDevice, 3*Chunk+1234)
	copy(dev[Chunk+17:], bytes.Repeat([]byte("data"), 1000))
	dev[len(dev)-1] = 9
	p := filepath.Join(t.TempDir(), "out")
	out, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	view, _ := blockdev.NewSection(dev, 5, dev.Size()-5)
	st, err := Stream(context.Background(), out, view, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	out.Close()
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, dev[5:]) {
		t.Fatal("copy differs")
	}
	if st.Holes == 0 {
		t.Fatal("no chunk was left as a hole")
	}
}
