package main

import (
	"fmt"
	"os"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs"
	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/blockdev/target"
)

func catCommand() *cli.Command {
	var (
		of                      openFlags
		offset, length, outPath string
		stats                   bool
		ofl                     outputFlags
	)
	return &cli.Command{
		Name:      "cat",
		Usage:     "write the plaintext disk (or a range of it) to stdout or a file",
		ArgsUsage: "SOURCE",
		Flags: append(append(of.flags(),
			&cli.StringFlag{Name: "offset", Value: "0", Destination: &offset, Usage: "start at byte `N` of the plaintext (suffixes: 4K, 1M, 1MiB, 1MB)"},
			&cli.StringFlag{Name: "length", Destination: &length, Usage: "write `N` bytes (default: to the end)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Destination: &outPath, Usage: "write to `FILE` (holes stay sparse; created as 0600 and renamed into place when complete and verified) a block device (in place) or an RBD image (rbd:POOL/IMAGE) instead of stdout"},
			&cli.BoolFlag{Name: "stats", Destination: &stats, Usage: "print bytes read and throughput to stderr"},
		), ofl.flags()...), // --ceph-* come with the source flags and serve an rbd: output too
		Action: func(c *cli.Context) error {
			if err := sourceArg("cat", c.Args().Slice()); err != nil {
				return err
			}
			spec := c.Args().First()
			off, err := parseSize(offset)
			if err != nil {
				return usageError("--offset: %v", err)
			}
			n := int64(-1)
			if length != "" {
				if n, err = parseSize(length); err != nil {
					return usageError("--length: %v", err)
				}
			}
			opts, err := of.options()
			if err != nil {
				return err
			}
			// The first chunk the output reads is fetched during the unlock.
			opts.FirstRead = imgfs.ByteRange{Offset: off, Length: target.Chunk}
			if n >= 0 {
				opts.FirstRead.Length = min(n, target.Chunk)
			}
			img, err := openImage(c.Context, spec, opts)
			if err != nil {
				return err
			}
			defer img.Close()
			size := img.Disk.Size()
			if off > size {
				return fmt.Errorf("%s: --offset %d is past the end of the %d-byte disk", spec, off, size)
			}
			if n > size-off {
				return fmt.Errorf("%s: --offset %d + --length %d is past the end of the %d-byte disk", spec, off, n, size)
			}
			if n < 0 {
				n = size - off
			}
			view, err := blockdev.NewSection(img.Disk, off, n)
			if err != nil {
				return fmt.Errorf("%s: %w", spec, err)
			}
			if err := checkNotSource(spec, outPath); err != nil {
				return err
			}
			out := ofl.output(outPath, nil)
			out.ceph = opts.Ceph
			if off == 0 && n == size && img.CanVerify() {
				out.verify = img.Verify
			}
			if w := img.IntegrityWarning(); w != "" && off == 0 && n == size {
				defer fmt.Fprintf(os.Stderr, "imgfs: warning: %s: %s\n", spec, w)
			}
			ctx, stop := interruptible(c.Context)
			defer stop()
			st, err := out.write(ctx, view)
			if err != nil {
				return fmt.Errorf("%s: %w", spec, err)
			}
			if stats {
				printCatStats(img, st.Written, st.Holes, st.Rate(), st.Elapsed.Round(1e6).String())
			}
			return nil
		},
	}
}

func printCatStats(img *imgfs.Image, written, holes int64, rate float64, elapsed string) {
	if line := statsLine(img); line != "" {
		fmt.Fprintf(os.Stderr, "imgfs: source: %s\n", line)
	}
	fmt.Fprintf(os.Stderr, "imgfs: wrote %s in %s (%s/s), %s of holes skipped\n",
		humanize.IBytes(uint64(written)), elapsed, humanize.IBytes(uint64(rate)), humanize.IBytes(uint64(holes)))
}
