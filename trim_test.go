package imgfs

import (
	"bytes"
	"errors"
	"testing"

	"github.com/imgfs/imgfs/blockdev"
)

func TestTrimPadding(t *testing.T) {
	data := bytes.Repeat([]byte{1, 2, 3, 4}, 1024) // 4096-byte payload
	vol := bytes.NewReader(data)
	for _, c := range []struct {
		sector, stated, size int64
		kind                 error
	}{
		{512, 4096, 4096, nil},
		{512, 4000, 4000, nil},
		{512, 3585, 3585, nil},
		{512, 3584, 0, blockdev.ErrCorrupt}, // a whole sector of padding
		{4096, 1, 1, nil},
		{512, 4097, 0, blockdev.ErrTruncated},
	} {
		d, err := trimPadding(vol, c.sector, c.stated)
		switch {
		case c.kind != nil:
			if !errors.Is(err, c.kind) {
				t.Errorf("sector %d, stated %d: %v, want %v", c.sector, c.stated, err, c.kind)
			}
		case err != nil:
			t.Errorf("sector %d, stated %d: %v", c.sector, c.stated, err)
		case d.Size() != c.size:
			t.Errorf("sector %d, stated %d: size %d, want %d", c.sector, c.stated, d.Size(), c.size)
		default:
			got := make([]byte, c.size)
			if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, data[:c.size]) {
				t.Errorf("sector %d, stated %d: bytes differ (%v)", c.sector, c.stated, err)
			}
		}
	}
}
