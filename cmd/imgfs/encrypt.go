package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
)

// Output formats of `imgfs encrypt --format`.
const (
	encryptLUKS      = "luks"
	encryptQcow2LUKS = "qcow2+luks"
)

// encryptFlags are the flags of a command that encrypts a plaintext INPUT
// (encrypt, upload).
type encryptFlags struct {
	format string
	input  formatFlags
	luks   newLUKSFlags
	prog   progressFlags
}

func (e *encryptFlags) flags(formatUsage string) []cli.Flag {
	fl := []cli.Flag{&cli.StringFlag{Name: "format", Value: encryptLUKS, Destination: &e.format, Usage: formatUsage}}
	fl = append(fl, e.input.flags("input-format", "state INPUT's format (raw, qcow2); a mismatch with its magic is an error")...)
	fl = append(fl, e.luks.flags()...)
	return append(fl, e.prog.flags()...)
}

// encryption is a parsed encryptFlags.
type encryption struct {
	format      string // encryptLUKS or encryptQcow2LUKS
	luks        luksio.FormatOptions
	clusterSize int64
	progress    string
	input       imgfs.Options
}

func (e *encryptFlags) parse() (encryption, error) {
	var x encryption
	var err error
	x.format = strings.ToLower(e.format)
	switch x.format {
	case encryptLUKS, encryptQcow2LUKS:
	default:
		return x, usageError("--format %q: want luks or qcow2+luks", e.format)
	}
	if x.luks, err = e.luks.options(); err != nil {
		return x, err
	}
	if x.progress, err = e.prog.mode(); err != nil {
		return x, err
	}
	if x.format == encryptQcow2LUKS {
		if x.clusterSize, err = e.luks.clusterBytes(); err != nil {
			return x, err
		}
	}
	if err := e.input.apply(&x.input, "input-format", imgfs.FormatRaw, imgfs.FormatQcow2); err != nil {
		return x, err
	}
	// INPUT is plaintext: no key is read for it.
	x.input.NoKey = true
	return x, nil
}

func encryptCommand() *cli.Command {
	var (
		ef      encryptFlags
		key     keyFlags
		outPath string
		ofl     outputFlags
	)
	return &cli.Command{
		Name:  "encrypt",
		Usage: "write a new encrypted image (raw LUKS1 or qcow2+LUKS) of a raw or qcow2 INPUT, streaming",
		Description: "The volume key is random; the passphrase (--passphrase-file, or --key-file whose\n" +
			"lowercase hex is the passphrase, as OpenStack uses Barbican keys) goes into keyslot 0.\n" +
			"The header is cryptsetup's LUKS1 default: aes-xts-plain64, 512-bit key, PBKDF2-sha256\n" +
			"calibrated to --iter-time, payload at 2 MiB. qemu-img and cryptsetup open the result.\n" +
			"INPUT may be a file, an http(s) URL or a Glance image.",
		ArgsUsage: "INPUT",
		Flags: append(append(append(ef.flags("output format: luks (raw LUKS1) or qcow2+luks (qcow2 v3 with LUKS1 encryption, zero clusters unallocated)"),
			key.sourceFlags()...),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Destination: &outPath, Usage: "write to `FILE` (created atomically), a block device (in place), an RBD image (rbd:POOL/IMAGE) or - (stdout)"}),
			append(ofl.flags(), ofl.ceph.flags()...)...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError("encrypt: want INPUT")
			}
			spec := c.Args().First()
			x, err := ef.parse()
			if err != nil {
				return err
			}
			src, err := key.source()
			if err != nil {
				return err
			}
			if src == nil {
				return usageError("encrypt: a new passphrase is required: --passphrase-file FILE or --key-file FILE")
			}
			switch {
			case outPath == "":
				return usageError("encrypt: --output FILE is required (- for stdout with --format luks)")
			case outPath == "-" && x.format == encryptQcow2LUKS:
				return usageError("encrypt --format qcow2+luks is written with seeks: use -o FILE, not stdout")
			}
			if err := checkOutput(outPath); err != nil {
				return err
			}
			if abs, err := filepath.Abs(outPath); err == nil {
				if in, err2 := filepath.Abs(spec); err2 == nil && abs == in {
					return usageError("encrypt: OUTPUT is INPUT")
				}
			}
			if err := checkNotSource(spec, outPath); err != nil {
				return err
			}
			pass, err := src.Passphrase(c.Context)
			if err != nil {
				return fmt.Errorf("key: %w", err)
			}
			defer keyring.Zero(pass)
			out := ofl.output(outPath, nil)
			if out.ceph, err = ofl.ceph.config(); err != nil {
				return err
			}
			_, err = x.encrypt(c.Context, spec, out, pass)
			return err
		},
	}
}

// encrypt writes INPUT spec encrypted with pass to outPath and returns the
// plaintext's virtual size.
func (x encryption) encrypt(ctx context.Context, spec string, out output, pass []byte) (size int64, err error) {
	img, err := openImage(ctx, spec, x.input)
	if errors.Is(err, luksio.ErrKeyRequired) {
		return 0, fmt.Errorf("%s: the image is already encrypted; use `imgfs export --to luks` for a raw LUKS copy", spec)
	}
	if err != nil {
		return 0, err
	}
	defer img.Close()
	ctx, stop := interruptible(ctx)
	defer stop()
	prog := startProgress(x.progress, "encrypt "+filepath.Base(spec), img.Disk.Size(), os.Stderr)
	defer func() { prog.Finish(err) }()
	out.prog = prog
	if x.format == encryptQcow2LUKS {
		area, key, err := luksio.NewLUKS1(pass, x.luks)
		if err != nil {
			return 0, err
		}
		cipher, err := key.Cipher()
		key.Close()
		if err != nil {
			return 0, err
		}
		defer cipher.Close()
		return img.Disk.Size(), out.writeQcow2(ctx, img.Disk, qcowio.WriteOptions{ClusterSize: x.clusterSize, LUKSArea: area, Cipher: cipher})
	}
	view, err := luksio.NewLUKS1View(img.Disk, pass, x.luks)
	if err != nil {
		return 0, err
	}
	defer view.Close()
	_, err = out.write(ctx, view)
	return img.Disk.Size(), err
}
