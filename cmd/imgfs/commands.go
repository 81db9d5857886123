package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/cmd/imgfs/internal/image"
)

func commands() []*cli.Command {
	return []*cli.Command{
		{
			Name:      "info",
			Usage:     "describe an image without a key: format, LUKS header, qcow2 features, safety verdict",
			ArgsUsage: "SOURCE",
			Flags:     append(append(formatFlags(), sourceFlags()...), &cli.BoolFlag{Name: "json", Usage: "print JSON"}),
			Action:    infoAction,
		},
		{
			Name:      "cat",
			Usage:     "write the plaintext disk (or a range of it) to stdout or a file",
			ArgsUsage: "SOURCE",
			Flags: append(append(append(keyFlags(), formatFlags()...), sourceFlags()...),
				&cli.StringFlag{Name: "offset", Value: "0", Usage: "start at byte `N` of the plaintext (suffixes: 4K, 1M, 1MiB, 1MB)"},
				&cli.StringFlag{Name: "length", Usage: "write `N` bytes (default: to the end)"},
				&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write to `FILE` (holes stay sparse) instead of stdout"},
				&cli.BoolFlag{Name: "stats", Usage: "print bytes read and throughput to stderr"},
			),
			Action: catAction,
		},
		inspectCommand(),
		mountCommand(), umountCommand(),
		exportCommand(), encryptCommand(), uploadCommand(),
	}
}

func infoAction(c *cli.Context) error {
	spec, err := sourceArg(c)
	if err != nil {
		return err
	}
	opts, err := openOptions(c)
	if err != nil {
		return err
	}
	src, err := openSource(c.Context, c, spec)
	if err != nil {
		return err
	}
	defer src.close()
	mergeStated(&opts, src)
	info, err := image.Inspect(src.dev, opts)
	if err != nil {
		return fmt.Errorf("%s: %w", spec, err)
	}
	info.Source = src.info
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	}
	printInfo(os.Stdout, info)
	return nil
}

func printInfo(w io.Writer, info *image.Info) {
	kv := func(k string, v any) { fmt.Fprintf(w, "%-22s %v\n", k+":", v) }
	kv("format", info.Format)
	kv("encrypted", info.Encrypted)
	kv("source size", sizeString(info.SourceSize))
	kv("virtual size", sizeString(info.VirtualSize))
	if q := info.Qcow2; q != nil {
		kv("qcow2 version", q.Version)
		kv("cluster size", sizeString(q.ClusterSize))
		kv("encryption", q.Encryption)
		kv("compression type", q.CompressionType)
		kv("extended L2", q.ExtendedL2)
		kv("allocated", sizeString(q.AllocatedBytes))
		if len(q.IncompatibleFeatures) > 0 {
			kv("incompatible features", strings.Join(q.IncompatibleFeatures, ", "))
		}
		if len(q.CompatibleFeatures) > 0 {
			kv("compatible features", strings.Join(q.CompatibleFeatures, ", "))
		}
		if q.BackingFile != "" {
			kv("backing file", q.BackingFile)
		}
		if q.DataFile != "" {
			kv("data file", q.DataFile)
		}
	}
	if h := info.LUKS; h != nil {
		kv("LUKS version", h.Version)
		kv("UUID", h.UUID)
		kv("cipher", h.CipherSpec)
		kv("key size", fmt.Sprintf("%d bits", h.KeyBytes*8))
		kv("sector size", h.SectorSize)
		if info.Qcow2 == nil {
			// In qcow2+LUKS the header's payload fields are unused: the
			// clusters are the payload.
			kv("payload offset", h.PayloadOffset)
			kv("payload size", sizeString(h.PayloadSize))
		}
		if h.UsedSecondary {
			kv("header", "primary header corrupt: using the secondary copy")
		}
		for _, s := range h.Keyslots {
			cost := fmt.Sprintf("%d iterations", s.Iterations)
			if s.KDF != "pbkdf2" {
				cost = fmt.Sprintf("time %d, memory %d KiB, %d threads", s.Iterations, s.MemoryKiB, s.Parallel)
			}
			kv(fmt.Sprintf("keyslot %d", s.Index), fmt.Sprintf("%s (%s)", s.KDF, cost))
		}
	}
	printSource(w, info.Source)
	if info.Safe {
		kv("verdict", "safe")
	} else {
		kv("verdict", "UNSAFE")
		for _, r := range info.Reasons {
			fmt.Fprintf(w, "  - %s\n", r)
		}
	}
}

func sizeString(n int64) string {
	if n < 0 {
		return "unknown"
	}
	return fmt.Sprintf("%s (%d bytes)", humanize.IBytes(uint64(n)), n)
}

func catAction(c *cli.Context) error {
	spec, err := sourceArg(c)
	if err != nil {
		return err
	}
	off, err := parseSize(c.String("offset"))
	if err != nil {
		return usageError("--offset: %v", err)
	}
	length := int64(-1)
	if s := c.String("length"); s != "" {
		if length, err = parseSize(s); err != nil {
			return usageError("--length: %v", err)
		}
	}
	img, src, err := openImage(c, spec)
	if err != nil {
		return err
	}
	defer src.close()
	defer img.Close()
	size := img.Disk.Size()
	if off > size {
		return fmt.Errorf("%s: --offset %d is past the end of the %d-byte disk", spec, off, size)
	}
	if length < 0 || length > size-off {
		if length > size-off {
			return fmt.Errorf("%s: --offset %d + --length %d is past the end of the %d-byte disk", spec, off, length, size)
		}
		length = size - off
	}
	var out *os.File
	sparse := false
	if path := c.String("output"); path != "" && path != "-" {
		out, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer out.Close()
		if st, err := out.Stat(); err == nil && st.Mode().IsRegular() {
			sparse = true
		}
	} else {
		out = os.Stdout
	}
	view, err := blockdev.NewSection(img.Disk, off, length)
	if err != nil {
		return fmt.Errorf("%s: %w", spec, err)
	}
	st, err := streamDevice(c.Context, out, view, sparse, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", spec, err)
	}
	if out != os.Stdout {
		if err := out.Close(); err != nil {
			return err
		}
	}
	if off == 0 && length == size && src.verify != nil {
		if err := src.verify(c.Context); err != nil {
			return fmt.Errorf("%s: %w", spec, err)
		}
	}
	if c.Bool("stats") {
		if line := src.statsLine(); line != "" {
			fmt.Fprintf(os.Stderr, "imgfs: source: %s\n", line)
		}
		fmt.Fprintf(os.Stderr, "imgfs: wrote %s in %s (%s/s), %s of holes skipped\n",
			humanize.IBytes(uint64(st.written)), st.elapsed.Round(1e6), humanize.IBytes(uint64(st.rate())), humanize.IBytes(uint64(st.holes)))
	}
	return nil
}
