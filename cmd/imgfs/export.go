package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/blockdev"
	"github.com/imgfs/imgfs/cmd/imgfs/internal/image"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
)

// Targets of `imgfs export --to`.
const (
	exportLUKS  = "luks"
	exportRaw   = "raw"
	exportQcow2 = "qcow2"
)

// streamChunk is the unit of the export pipeline; memory stays bounded at

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:  "export",
		Usage: "stream an image into another format: luks (raw LUKS1, same key), qcow2 (same key if encrypted), raw (plaintext)",
		Description: "--to luks turns a qcow2+LUKS image into a raw LUKS1 volume that the same passphrase\n" +
			"opens (the keyslots are copied, the data re-encrypted in memory); a raw LUKS source is\n" +
			"copied as stored and needs no key. --to qcow2 writes a compact qcow2 (zero clusters\n" +
			"unallocated), qcow2+LUKS with the same keyslots when SOURCE is encrypted (LUKS1).\n" +
			"--to raw writes the plaintext disk (like cat). Only --to raw puts plaintext on disk.",
		ArgsUsage: "SOURCE",
		Flags: append(append(keyFlags(), formatFlags()...),
			&cli.StringFlag{Name: "to", Usage: "target format: luks, raw or qcow2 (qcow2+LUKS with the same keyslots for an encrypted SOURCE)"},
			clusterSizeFlagDef(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "-", Usage: "write to `FILE` (created atomically; - = stdout)"},
			progressFlag(),
		),
		Action: exportAction,
	}
}

func exportAction(c *cli.Context) error {
	spec, err := sourceArg(c)
	if err != nil {
		return err
	}
	to := strings.ToLower(c.String("to"))
	switch to {
	case exportLUKS, exportRaw, exportQcow2:
	case "":
		return usageError("export: --to is required (luks, raw or qcow2)")
	default:
		return usageError("--to %q: want luks, raw or qcow2", c.String("to"))
	}
	mode, err := progressMode(c)
	if err != nil {
		return err
	}
	opts, err := openOptions(c)
	if err != nil {
		return err
	}
	outPath := c.String("output")
	if err := checkOutput(outPath); err != nil {
		return err
	}

	// A raw LUKS volume exported to LUKS is its stored bytes: no key needed.
	if to == exportLUKS && opts.Key == nil {
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
		if info.Format == image.FormatLUKS && info.Safe {
			return writeDevice(c.Context, src.dev, outPath, mode, "export "+filepath.Base(spec))
		}
		if !info.Encrypted {
			return fmt.Errorf("%s: export --to luks: the image is not encrypted; use `imgfs encrypt --format luks` to make a new LUKS volume", spec)
		}
		// Fall through to image.Open, which explains what is missing.
	}

	img, src, err := openImage(c, spec)
	if err != nil {
		return err
	}
	defer src.close()
	defer img.Close()
	if to == exportQcow2 {
		wopts, err := qcow2Encryption(img)
		if err != nil {
			return fmt.Errorf("%s: export --to qcow2: %w", spec, err)
		}
		if wopts.ClusterSize, err = clusterSizeFlag(c); err != nil {
			return err
		}
		return writeQcow2File(c.Context, img.Disk, outPath, mode, "export "+filepath.Base(spec), wopts)
	}
	d := img.Disk
	if to != exportRaw {
		if d, err = rawLUKSView(img); err != nil {
			return fmt.Errorf("%s: export --to luks: %w", spec, err)
		}
	}
	return writeDevice(c.Context, d, outPath, mode, "export "+filepath.Base(spec))
}

// errNotEncrypted explains why an unencrypted image has no raw-LUKS view.
var errNotEncrypted = errors.New("the image is not encrypted; use `imgfs encrypt --format luks` to make a new LUKS volume")

// rawLUKSView returns the image as a raw LUKS volume that the same key opens:
// a raw LUKS image as stored, a qcow2+LUKS image re-encrypted in memory to the
// raw layout under a copy of its LUKS header and keyslots.
func rawLUKSView(img *image.Image) (blockdev.Device, error) {
	switch {
	case img.Info.Format == image.FormatLUKS:
		return img.Stored, nil
	case !img.Info.Encrypted:
		return nil, errNotEncrypted
	}
	q, ok := img.Disk.(*qcowio.Image)
	if !ok || q.LUKSArea() == nil || q.SectorCipher() == nil {
		return nil, fmt.Errorf("no usable LUKS header in the qcow2 image: %w", blockdev.ErrCorrupt)
	}
	return luksio.NewRawView(q, q.LUKSArea(), q.SectorCipher())
}

// qcow2Encryption returns the LUKS area and cipher that keep an encrypted
// image's keyslots in a qcow2+LUKS copy (none for an unencrypted image).
func qcow2Encryption(img *image.Image) (qcowio.WriteOptions, error) {
	var area blockdev.Device
	var c *luksio.SectorCipher
	switch d := img.Disk.(type) {
	case *luksio.Volume:
		h := d.Header()
		if h.Version != 1 {
			return qcowio.WriteOptions{}, fmt.Errorf("a LUKS%d volume cannot be embedded in qcow2 (qemu reads LUKS1 only): %w", h.Version, blockdev.ErrUnsupported)
		}
		a, err := blockdev.NewSection(img.Stored, 0, h.PayloadOffset)
		if err != nil {
			return qcowio.WriteOptions{}, err
		}
		area, c = a, d.SectorCipher()
	case *qcowio.Image:
		if !d.Encrypted() {
			return qcowio.WriteOptions{}, nil
		}
		area, c = d.LUKSArea(), d.SectorCipher()
	default:
		return qcowio.WriteOptions{}, nil
	}
	if area == nil || c == nil {
		return qcowio.WriteOptions{}, fmt.Errorf("no usable LUKS header: %w", blockdev.ErrCorrupt)
	}
	if area.Size() > maxQcow2LUKSArea {
		return qcowio.WriteOptions{}, fmt.Errorf("LUKS header area of %d bytes exceeds %d: %w", area.Size(), maxQcow2LUKSArea, blockdev.ErrUnsupported)
	}
	buf := make([]byte, area.Size())
	if err := blockdev.ReadFull(area, buf, 0); err != nil {
		return qcowio.WriteOptions{}, fmt.Errorf("LUKS header area: %w", err)
	}
	return qcowio.WriteOptions{LUKSArea: buf, Cipher: c}, nil
}

// maxQcow2LUKSArea bounds the LUKS header area copied into a qcow2 image.
const maxQcow2LUKSArea = 64 << 20

// clusterSizeFlag reads --cluster-size.
func clusterSizeFlag(c *cli.Context) (int64, error) {
	n, err := parseSize(c.String("cluster-size"))
	if err != nil || n < 4096 || n > 2<<20 || n&(n-1) != 0 {
		return 0, usageError("--cluster-size %q: want a power of two from 4K to 2M", c.String("cluster-size"))
	}
	return n, nil
}

func clusterSizeFlagDef() cli.Flag {
	return &cli.StringFlag{Name: "cluster-size", Value: "64K", Usage: "qcow2 cluster `SIZE` (4K to 2M)"}
}

// checkOutput refuses to write an image to a terminal.
func checkOutput(path string) error {
	if (path == "" || path == "-") && isTerminal(os.Stdout) {
		return usageError("refusing to write an image to a terminal: use -o FILE or redirect stdout")
	}
	return nil
}

// writeDevice streams d to path ("-" = stdout) with progress. A file is
// written under a temporary name in its directory and renamed when
// complete, so a failed run leaves no partial image behind.
func writeDevice(ctx context.Context, d blockdev.Device, path, mode, what string) (err error) {
	ctx, stop := interruptible(ctx)
	defer stop()
	prog := startProgress(mode, what, d.Size(), os.Stderr)
	defer func() { prog.Finish(err) }()
	if path == "" || path == "-" {
		_, err := streamDevice(ctx, os.Stdout, d, false, prog)
		return err
	}
	return writeAtomically(path, func(f *os.File) error { _, err := streamDevice(ctx, f, d, true, prog); return err })
}

// writeQcow2File writes the plaintext disk d as a qcow2 image (encrypted
// when opts carry a LUKS area and cipher) to the file path, with progress.
func writeQcow2File(ctx context.Context, d blockdev.Device, path, mode, what string, opts qcowio.WriteOptions) (err error) {
	if path == "" || path == "-" {
		return usageError("qcow2 output is written with seeks: use -o FILE, not stdout")
	}
	ctx, stop := interruptible(ctx)
	defer stop()
	prog := startProgress(mode, what, d.Size(), os.Stderr)
	defer func() { prog.Finish(err) }()
	opts.Progress = prog.Add
	return writeAtomically(path, func(f *os.File) error {
		_, err := qcowio.Write(ctx, f, d, opts)
		return err
	})
}

// interruptible cancels ctx on SIGINT or SIGTERM, so that an interrupted
// export stops cleanly and removes its temporary file.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

// writeAtomically creates a temporary file (mode 0600) beside path, lets
// fill write it, and renames it to path on success; on failure it removes it.
func writeAtomically(path string, fill func(*os.File) error) (err error) {
	defer func() {
		if errors.Is(err, context.Canceled) {
			err = fmt.Errorf("interrupted, %s not written: %w", path, err)
		}
	}()
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".imgfs-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = fill(tmp); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
