package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs"
	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/sniff"
)

// inspectCommand is `imgfs inspect`: the outer layer's verdict without a
// key, and with a key (or for an unencrypted image) what the plaintext
// holds, read from the few sectors where signatures live.
func inspectCommand() *cli.Command {
	var (
		of         openFlags
		jsonFlag   bool
		policyPath string
	)
	return &cli.Command{
		Name:  "inspect",
		Usage: "judge an image: its outer layer without a key; with a key, also the plaintext's partitions, filesystems and hidden disk images",
		Description: "Exit status: 0 safe, 3 unsafe, 1 error. Without a key an encrypted image's plaintext is not examined.\n" +
			"--policy FILE is JSON {\"allow\": [formats], \"forbid\": [formats]}: a forbidden format is unsafe; with an\n" +
			"allow list anything not listed is unsafe; disk-image formats (qcow2, vmdk, vhd...) are unsafe unless allowed.",
		ArgsUsage: "SOURCE",
		Flags: append(of.flags(),
			&cli.BoolFlag{Name: "json", Destination: &jsonFlag, Usage: "print JSON"},
			&cli.StringFlag{Name: "policy", Destination: &policyPath, Usage: "judge the plaintext with the JSON policy in `FILE` (default: disk-image formats are unsafe)"},
		),
		Action: func(c *cli.Context) error {
			if err := sourceArg("inspect", c.Args().Slice()); err != nil {
				return err
			}
			spec := c.Args().First()
			opts, err := of.options()
			if err != nil {
				return err
			}
			var policy sniff.Policy
			if policyPath != "" {
				if policy, err = sniff.LoadPolicy(policyPath); err != nil {
					return fmt.Errorf("--policy: %w", err)
				}
			}
			counter := &countingDevice{}
			opts.StoredOnly = true
			opts.WrapStored = func(d blockdev.Device) blockdev.Device { counter.Device = d; return counter }
			img, err := openImage(c.Context, spec, opts)
			if err != nil {
				return err
			}
			defer img.Close()
			out, err := inspect(c.Context, img, policy)
			if err != nil {
				return fmt.Errorf("%s: %w", spec, err)
			}
			out.SourceBytesRead = counter.n.Load()
			if jsonFlag {
				if err := printJSON(out); err != nil {
					return err
				}
			} else {
				printInspection(os.Stdout, out)
			}
			if !out.Safe {
				return cli.Exit(fmt.Sprintf("%s is unsafe: %s", spec, safeText(strings.Join(out.Reasons, "; "))), exitUnsafe)
			}
			return nil
		},
	}
}

// inspection is what `imgfs inspect` prints.
type inspection struct {
	Source map[string]any `json:"source,omitempty"`
	// Outer is the verdict on the image as stored, made without a key.
	Outer *imgfs.Info `json:"outer"`
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

// inspect judges the outer layer (img opened StoredOnly) and, when it is
// safe and can be read, what the plaintext holds.
func inspect(ctx context.Context, img *imgfs.Image, policy sniff.Policy) (*inspection, error) {
	out := &inspection{Source: img.Info.Source, Outer: img.Info}
	switch {
	case !out.Outer.Safe:
		out.InnerNote = "not examined: the outer layer is unsafe"
	case out.Outer.Encrypted && !img.HasKey():
		out.InnerNote = "not examined: the image is encrypted and no key was given (--passphrase-file, --key-file or --key-id)"
	default:
		outer := img.Info
		if err := img.OpenDisk(ctx); err != nil {
			return nil, err
		}
		out.Outer = outer
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

// indented prefixes every line written through it.
type indented struct {
	w      io.Writer
	prefix string
}

func (i indented) Write(p []byte) (int, error) {
	s := strings.TrimSuffix(string(p), "\n")
	s = i.prefix + strings.ReplaceAll(s, "\n", "\n"+i.prefix) + "\n"
	if _, err := io.WriteString(i.w, s); err != nil {
		return 0, err
	}
	return len(p), nil
}

func printInspection(w io.Writer, in *inspection) {
	printSource(w, in.Source)
	fmt.Fprintln(w, "outer layer (examined without a key):")
	printInfo(indented{w, "  "}, in.Outer)
	if in.Inner == nil {
		fmt.Fprintf(w, "inner layer: %s\n", in.InnerNote)
	} else {
		fmt.Fprintf(w, "inner layer (plaintext, %s):\n", humanize.IBytes(uint64(in.Inner.Size)))
		printReport(indented{w, "  "}, in.Inner)
	}
	kv := func(k string, v any) { fmt.Fprintf(w, "%-26s %s\n", k+":", safeText(v)) }
	kv("bytes read from source", fmt.Sprintf("%d (%s)", in.SourceBytesRead, humanize.IBytes(uint64(in.SourceBytesRead))))
	if in.SourceStats != nil {
		kv("remote", in.SourceStats.String())
	}
	if in.InnerExamined {
		kv("plaintext bytes examined", fmt.Sprintf("%d (%s)", in.PlaintextBytesExamined, humanize.IBytes(uint64(in.PlaintextBytesExamined))))
	}
	if in.Safe {
		kv("verdict", "safe")
		return
	}
	kv("verdict", "UNSAFE")
	for _, r := range in.Reasons {
		fmt.Fprintf(w, "  - %s\n", safeText(r))
	}
}

// printReport prints what sniff found in the plaintext.
func printReport(w io.Writer, r *sniff.Report) {
	kv := func(k string, v any) { fmt.Fprintf(w, "%-22s %s\n", k+":", safeText(v)) }
	kv("format", r.Format)
	if pt := r.PartitionTable; pt != nil {
		desc := fmt.Sprintf("%s, %d-byte sectors", pt.Scheme, pt.SectorSize)
		if pt.DiskGUID != "" {
			desc += ", disk GUID " + pt.DiskGUID
		}
		if pt.DiskID != "" {
			desc += ", disk id " + pt.DiskID
		}
		if pt.Backup != "" {
			desc += ", backup header " + pt.Backup
		}
		kv("partition table", desc)
	}
	for _, p := range r.Partitions {
		typ := p.Type
		if p.TypeName != "" {
			typ = p.TypeName
		}
		line := fmt.Sprintf("%s at %d (%s), %s", humanize.IBytes(uint64(p.Size)), p.Start, humanize.IBytes(uint64(p.Start)), typ)
		if p.Name != "" {
			line += fmt.Sprintf(" %q", p.Name)
		}
		if p.Contents != "" {
			line += ", contains " + p.Contents
		}
		kv(fmt.Sprintf("partition %d", p.Index), line)
	}
	for _, f := range r.Filesystems {
		line := fmt.Sprintf("%s (%s) at %d", f.Format, f.Kind, f.Offset)
		if f.Partition != 0 {
			line += fmt.Sprintf(" (partition %d)", f.Partition)
		}
		if f.Size > 0 {
			line += ", " + humanize.IBytes(uint64(f.Size))
		}
		if f.Label != "" {
			line += fmt.Sprintf(", label %q", f.Label)
		}
		if f.UUID != "" {
			line += ", UUID " + f.UUID
		}
		if f.Detail != "" {
			line += ", " + f.Detail
		}
		kv("found", line)
	}
	for _, warn := range r.Warnings {
		kv("warning", warn)
	}
	kv("bytes examined", r.BytesRead)
	if r.Safe {
		kv("verdict", "safe")
		return
	}
	kv("verdict", "UNSAFE")
	for _, reason := range r.Reasons {
		fmt.Fprintf(w, "  - %s\n", safeText(reason))
	}
}

// countingDevice counts the bytes read through it.
type countingDevice struct {
	blockdev.Device
	n atomic.Int64
}

// ReadAt implements io.ReaderAt.
func (d *countingDevice) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.Device.ReadAt(p, off)
	d.n.Add(int64(n))
	return n, err
}
