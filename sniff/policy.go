package sniff

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// Policy decides whether what Identify found is safe. Its zero value is
// the default policy: every disk-image format is unsafe, everything else
// (partition tables, filesystems, unknown raw content) is safe.
//
// In JSON (`imgfs inspect --policy FILE`):
//
//	{"allow": ["gpt", "mbr", "ext4", "xfs", "swap"], "forbid": ["ntfs"]}
//
// The rules, applied to every format found — the partition table, each
// signature at offset 0, at a partition start or at the end of the disk,
// and "unknown" for a disk or partition where nothing was recognised:
//  1. a format listed in Forbid is unsafe;
//  2. if Allow is not empty, a format not listed in Allow is unsafe;
//  3. a disk-image format (DiskImageFormats) is unsafe unless listed in Allow.
//
// Names are those of KnownFormats, case-insensitive; others are an error,
// so that a typo cannot silently weaken a policy.
type Policy struct {
	Allow  []string `json:"allow,omitempty"`
	Forbid []string `json:"forbid,omitempty"`
}

// maxPolicyFile bounds the size of a policy file.
const maxPolicyFile = 1 << 20

// LoadPolicy reads a JSON policy file.
func LoadPolicy(path string) (Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return Policy{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPolicyFile+1))
	if err != nil {
		return Policy{}, fmt.Errorf("policy %s: %w", path, err)
	}
	if len(b) > maxPolicyFile {
		return Policy{}, fmt.Errorf("policy %s: larger than %d bytes", path, maxPolicyFile)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return Policy{}, fmt.Errorf("policy %s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy decodes and checks a JSON policy.
func ParsePolicy(b []byte) (Policy, error) {
	var p Policy
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, err
	}
	if dec.More() {
		return Policy{}, fmt.Errorf("trailing data after the JSON object")
	}
	for _, list := range [][]string{p.Allow, p.Forbid} {
		for i, name := range list {
			list[i] = strings.ToLower(strings.TrimSpace(name))
			if !slices.Contains(KnownFormats, list[i]) {
				return Policy{}, fmt.Errorf("unknown format %q (known: %s)", name, strings.Join(KnownFormats, ", "))
			}
		}
	}
	return p, nil
}

// finding is one format at one place, as the policy sees it.
type finding struct {
	format, where, detail string
}

func findings(rep *Report) []finding {
	var fs []finding
	if pt := rep.PartitionTable; pt != nil {
		fs = append(fs, finding{pt.Scheme, "partition table", ""})
	}
	if rep.Format == FormatUnknown {
		fs = append(fs, finding{FormatUnknown, "the whole disk", ""})
	}
	for _, p := range rep.Partitions {
		if p.Contents == FormatUnknown {
			fs = append(fs, finding{FormatUnknown, fmt.Sprintf("partition %d", p.Index), ""})
		}
	}
	for _, f := range rep.Filesystems {
		where := fmt.Sprintf("offset %d", f.Offset)
		if f.Partition != 0 {
			where = fmt.Sprintf("the start of partition %d (offset %d)", f.Partition, f.Offset)
		}
		fs = append(fs, finding{f.Format, where, f.Detail})
	}
	return fs
}

// Apply sets rep.Safe and rep.Reasons according to the policy.
func (p Policy) Apply(rep *Report) {
	rep.Safe, rep.Reasons = true, nil
	for _, f := range findings(rep) {
		var why string
		switch {
		case slices.Contains(p.Forbid, f.format):
			why = fmt.Sprintf("%s at %s is forbidden by the policy", f.format, f.where)
		case len(p.Allow) > 0 && !slices.Contains(p.Allow, f.format):
			why = fmt.Sprintf("%s at %s is not in the policy's allow list", f.format, f.where)
		case slices.Contains(DiskImageFormats, f.format) && !slices.Contains(p.Allow, f.format):
			why = fmt.Sprintf("%s inside the image at %s: QEMU would parse it as a disk image", f.format, f.where)
			if f.detail != "" {
				why += " (" + f.detail + ")"
			}
		default:
			continue
		}
		if !slices.Contains(rep.Reasons, why) {
			rep.Safe = false
			rep.Reasons = append(rep.Reasons, why)
		}
	}
}
