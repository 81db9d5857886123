package main

import (
	"fmt"
	"io"
	"os"
	"strings"

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
			counter := &imgfs.CountingDevice{}
			opts.StoredOnly = true
			opts.WrapStored = func(d blockdev.Device) blockdev.Device { counter.Device = d; return counter }
			img, err := openImage(c.Context, spec, opts)
			if err != nil {
				return err
			}
			defer img.Close()
			out, err := imgfs.Inspect(c.Context, img, policy)
			if err != nil {
				return fmt.Errorf("%s: %w", spec, err)
			}
			out.SourceBytesRead = counter.Bytes()
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

func printInspection(w io.Writer, in *imgfs.Inspection) {
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
