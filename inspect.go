package imgfs

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/sniff"
)

// Inspection is the verdict of `imgfs inspect`: the outer layer judged
// without a key and, when it could be read, what the plaintext holds.
type Inspection struct {
	Source map[string]any `json:"source,omitempty"`
	// Outer is the verdict on the image as stored, made without a key.
	Outer *Info `json:"outer"`
	// Inner is what the plaintext holds; nil when it was not examined.
	Inner         *sniff.Report `json:"inner,omitempty"`
	InnerExamined bool          `json:"inner_examined"`
	InnerNote     string        `json:"inner_note,omitempty"`
	// SourceBytesRead counts the bytes read from the source device (headers,
	// keyslots, qcow2 tables and the ciphertext of the sectors examined).
	SourceBytesRead int64 `json:"source_bytes_read"`
	// SourceStats are a remote source's HTTP and cache counters.
	SourceStats *blockdev.Stats `json:"source_stats,omitempty"`
	// PlaintextBytesExamined is what the sniffer read of the plaintext disk.
	PlaintextBytesExamined int64    `json:"plaintext_bytes_examined"`
	Safe                   bool     `json:"safe"`
	Reasons                []string `json:"reasons,omitempty"`
}

// Inspect judges the outer layer of img (opened with StoredOnly) and, when
// it is safe and can be read (unencrypted, or a key was given), unlocks it
// and judges what the plaintext holds with policy, reading only the
// sectors where signatures live.
func Inspect(ctx context.Context, img *Image, policy sniff.Policy) (*Inspection, error) {
	out := &Inspection{Source: img.Info.Source, Outer: img.Info}
	switch {
	case !out.Outer.Safe:
		out.InnerNote = "not examined: the outer layer is unsafe"
	case out.Outer.Encrypted && !img.HasKey():
		out.InnerNote = "not examined: the image is encrypted and no key was given (--passphrase-file, --key-file or --key-id)"
	default:
		if err := img.OpenDisk(ctx); err != nil {
			return nil, err
		}
		rep, err := sniff.Identify(img.Disk, img.Disk.Size())
		if err != nil {
			return nil, fmt.Errorf("plaintext: %w", err)
		}
		policy.Apply(rep)
		out.Inner, out.InnerExamined = rep, true
		out.PlaintextBytesExamined = rep.BytesRead
	}
	if st, ok := img.Stats(); ok {
		out.SourceStats = &st
	}
	out.Safe = out.Outer.Safe
	for _, r := range out.Outer.Reasons {
		out.Reasons = append(out.Reasons, "outer layer: "+r)
	}
	if out.Inner != nil {
		out.Safe = out.Safe && out.Inner.Safe
		for _, r := range out.Inner.Reasons {
			out.Reasons = append(out.Reasons, "plaintext: "+r)
		}
	}
	return out, nil
}

// CountingDevice counts the bytes read through it (Options.WrapStored
// sets its Device).
type CountingDevice struct {
	blockdev.Device
	n atomic.Int64
}

// ReadAt implements io.ReaderAt.
func (d *CountingDevice) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.Device.ReadAt(p, off)
	d.n.Add(int64(n))
	return n, err
}

// Bytes returns how many bytes were read.
func (d *CountingDevice) Bytes() int64 { return d.n.Load() }
