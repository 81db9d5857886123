package imgfs

import (
	"context"
	"fmt"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/sniff"
)

// PartitionFile is one partition of the plaintext disk, as a Device of its
// own (a section of Disk that keeps the data map, so SEEK_DATA and
// SEEK_HOLE work on it).
type PartitionFile struct {
	// File is the file name in a mount: disk.p1, disk.p2, ... (the
	// partition's index in its table, as Linux numbers them).
	File string `json:"file"`
	sniff.Partition
	Device blockdev.Device `json:"-"`
}

// Partitions is the plaintext disk's partition table.
type Partitions struct {
	Table      *sniff.PartitionTable `json:"table,omitempty"`
	Partitions []PartitionFile       `json:"partitions"`
	// Skipped lists partitions that lie outside the disk and have no file.
	Skipped []string `json:"skipped,omitempty"`
}

// Partitions reads the MBR or GPT partition table of the plaintext disk
// (a few sectors). A partition holding another LUKS volume is listed with
// its contents ("luks") and served as its ciphertext; it is not opened.
func (img *Image) Partitions() (*Partitions, error) {
	if img.Disk == nil {
		return nil, fmt.Errorf("partitions: the image is not open for reading")
	}
	rep, err := sniff.Identify(img.Disk, img.Disk.Size())
	if err != nil {
		return nil, fmt.Errorf("partition table: %w", err)
	}
	out := &Partitions{Table: rep.PartitionTable, Partitions: []PartitionFile{}}
	for _, p := range rep.Partitions {
		sec, err := blockdev.NewSection(img.Disk, p.Start, p.Size)
		if err != nil || p.Size <= 0 {
			out.Skipped = append(out.Skipped, fmt.Sprintf("partition %d (%d+%d) lies outside the %d-byte disk", p.Index, p.Start, p.Size, img.Disk.Size()))
			continue
		}
		out.Partitions = append(out.Partitions, PartitionFile{File: fmt.Sprintf("disk.p%d", p.Index), Partition: p, Device: sec})
	}
	return out, nil
}

// OpenLUKSPartition unlocks a partition that holds a LUKS volume with the
// key given for it and returns its plaintext; Close zeroes its key. A
// partition that is not LUKS, or a key that opens no keyslot, is an error.
func (img *Image) OpenLUKSPartition(ctx context.Context, p PartitionFile, key keyring.Source) (*luksio.Volume, error) {
	if p.Contents != sniff.FormatLUKS {
		return nil, fmt.Errorf("%s holds %s, not a LUKS volume: %w", p.File, p.Contents, luksio.ErrNotEncrypted)
	}
	pass, err := key.Passphrase(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: key: %w", p.File, err)
	}
	defer keyring.Zero(pass)
	vol, err := luksio.Open(p.Device, pass, img.opts.Unlock)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.File, err)
	}
	return vol, nil
}
