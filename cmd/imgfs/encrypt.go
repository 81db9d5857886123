package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/cmd/imgfs/internal/image"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
)

// Output formats of `imgfs encrypt --format`.
const (
	encryptLUKS      = "luks"
	encryptQcow2LUKS = "qcow2+luks"
)

func encryptCommand() *cli.Command {
	return &cli.Command{
		Name:  "encrypt",
		Usage: "write a new encrypted image (raw LUKS1 or qcow2+LUKS) of a raw or qcow2 INPUT, streaming",
		Description: "The volume key is random; the passphrase (--passphrase-file, or --key-file whose\n" +
			"lowercase hex is the passphrase, as OpenStack uses Barbican keys) goes into keyslot 0.\n" +
			"The header is cryptsetup's LUKS1 default: aes-xts-plain64, 512-bit key, PBKDF2-sha256\n" +
			"calibrated to --iter-time, payload at 2 MiB. qemu-img and cryptsetup open the result.",
		ArgsUsage: "INPUT",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Value: encryptLUKS, Usage: "output format: luks (raw LUKS1) or qcow2+luks (qcow2 v3 with LUKS1 encryption, zero clusters unallocated)"},
			clusterSizeFlagDef(),
			&cli.StringFlag{Name: "passphrase-file", Usage: "read the new passphrase from `FILE` (- = stdin; one trailing newline is stripped)"},
			&cli.StringFlag{Name: "key-file", Usage: "read a binary key from `FILE` (- = stdin); its lowercase hex is the passphrase"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write to `FILE` (created atomically; - = stdout)"},
			&cli.StringFlag{Name: "input-format", Usage: "state INPUT's format (raw, qcow2); a mismatch with its magic is an error"},
			&cli.BoolFlag{Name: "allow-dirty", Usage: "accept a qcow2 INPUT whose dirty bit is set"},
			&cli.StringFlag{Name: "cipher", Value: luksio.DefaultCipher, Usage: "dm-crypt cipher `SPEC` (aes-xts-plain64, aes-cbc-essiv:sha256, ...)"},
			&cli.IntFlag{Name: "key-size", Usage: "volume key size in `BITS` (default 512 for XTS, 256 otherwise)"},
			&cli.StringFlag{Name: "hash", Value: luksio.DefaultHash, Usage: "PBKDF2 and AF `HASH` (sha1, sha256, sha512)"},
			&cli.IntFlag{Name: "iter-time", Value: int(luksio.DefaultIterTime / time.Millisecond), Usage: "calibrate PBKDF2 to `MS` milliseconds of unlock time"},
			&cli.UintFlag{Name: "pbkdf-iterations", Usage: "use exactly `N` PBKDF2 iterations (at least 1000) instead of calibrating"},
			progressFlag(),
		},
		Action: encryptAction,
	}
}

func encryptAction(c *cli.Context) (err error) {
	spec, err := sourceArg(c)
	if err != nil {
		return err
	}
	format := strings.ToLower(c.String("format"))
	switch format {
	case encryptLUKS, encryptQcow2LUKS:
	default:
		return usageError("--format %q: want luks or qcow2+luks", c.String("format"))
	}
	fopts, err := formatOptions(c)
	if err != nil {
		return err
	}
	mode, err := progressMode(c)
	if err != nil {
		return err
	}
	key, err := keySource(c)
	if err != nil {
		return err
	}
	if key == nil {
		return usageError("encrypt: a new passphrase is required: --passphrase-file FILE or --key-file FILE")
	}
	outPath := c.String("output")
	if outPath == "" {
		return usageError("encrypt: --output FILE is required (- for stdout with --format luks)")
	}
	var clusterSize int64
	if format == encryptQcow2LUKS {
		if clusterSize, err = clusterSizeFlag(c); err != nil {
			return err
		}
		if outPath == "-" {
			return usageError("encrypt --format qcow2+luks is written with seeks: use -o FILE, not stdout")
		}
	}
	if err := checkOutput(outPath); err != nil {
		return err
	}
	if abs, err := filepath.Abs(outPath); err == nil {
		if in, err2 := filepath.Abs(spec); err2 == nil && abs == in {
			return usageError("encrypt: OUTPUT is INPUT")
		}
	}

	_, err = encryptInput(c, spec, outPath, format, key, fopts, clusterSize, mode)
	return err
}

// encryptInput writes INPUT spec encrypted (format luks or qcow2+luks) with
// key's passphrase to outPath and returns the plaintext's virtual size.
func encryptInput(c *cli.Context, spec, outPath, format string, key keyring.Source, fopts luksio.FormatOptions, clusterSize int64, mode string) (size int64, err error) {
	inFormat := strings.ToLower(c.String("input-format"))
	switch inFormat {
	case "", image.FormatRaw, image.FormatQcow2:
	default:
		return 0, usageError("--input-format %q: want raw or qcow2", c.String("input-format"))
	}
	src, err := openSource(c.Context, c, spec)
	if err != nil {
		return 0, err
	}
	defer src.close()
	opts := image.Options{Format: inFormat, Policy: qcowio.Policy{AllowDirty: c.Bool("allow-dirty")}}
	mergeStated(&opts, src)
	opts.Key = nil // INPUT is plaintext: a --key-id names the new image's key
	info, err := image.Inspect(src.dev, opts)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", spec, err)
	}
	if info.Encrypted {
		return 0, fmt.Errorf("%s: the image is already encrypted (%s); use `imgfs export --to luks` for a raw LUKS copy", spec, info.Format)
	}
	img, err := image.Open(c.Context, src.dev, opts)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", spec, err)
	}
	defer img.Close()

	pass, err := key.Passphrase(c.Context)
	if err != nil {
		return 0, fmt.Errorf("key: %w", err)
	}
	what := "encrypt " + filepath.Base(spec)
	if format == encryptQcow2LUKS {
		area, key, err := luksio.NewLUKS1(pass, fopts)
		keyring.Zero(pass)
		if err != nil {
			return 0, err
		}
		cipher, err := key.Cipher()
		key.Close()
		if err != nil {
			return 0, err
		}
		defer cipher.Close()
		return img.Disk.Size(), writeQcow2File(c.Context, img.Disk, outPath, mode, what,
			qcowio.WriteOptions{ClusterSize: clusterSize, LUKSArea: area, Cipher: cipher})
	}
	view, err := luksio.NewLUKS1View(img.Disk, pass, fopts)
	keyring.Zero(pass)
	if err != nil {
		return 0, err
	}
	defer view.Close()
	return img.Disk.Size(), writeDevice(c.Context, view, outPath, mode, what)
}

// formatOptions collects the LUKS1 header parameters from the flags.
func formatOptions(c *cli.Context) (luksio.FormatOptions, error) {
	o := luksio.FormatOptions{Cipher: c.String("cipher"), Hash: c.String("hash")}
	if bits := c.Int("key-size"); bits != 0 {
		if bits%8 != 0 || bits < 0 {
			return o, usageError("--key-size %d: want a multiple of 8 bits", bits)
		}
		o.KeyBytes = bits / 8
	}
	if ms := c.Int("iter-time"); ms <= 0 {
		return o, usageError("--iter-time %d: want a positive number of milliseconds", ms)
	} else {
		o.IterTime = time.Duration(ms) * time.Millisecond
	}
	if n := c.Uint("pbkdf-iterations"); n != 0 {
		if n < luksio.MinPBKDF2Iterations || n > 1<<31-1 {
			return o, usageError("--pbkdf-iterations %d: want %d to %d", n, luksio.MinPBKDF2Iterations, 1<<31-1)
		}
		o.Iterations = uint32(n)
	}
	return o, nil
}
