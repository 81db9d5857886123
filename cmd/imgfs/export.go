package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs"
	"github.com/imgfs/imgfs/qcowio"
)

// Targets of `imgfs export --to`.
const (
	exportLUKS  = "luks"
	exportRaw   = "raw"
	exportQcow2 = "qcow2"
)

func exportCommand() *cli.Command {
	var (
		of          openFlags
		nl          newLUKSFlags
		to, outPath string
		pf          progressFlags
		ofl         outputFlags
		nk          newKeyFlags
	)
	return &cli.Command{
		Name:  "export",
		Usage: "stream an image into another format: luks (raw LUKS1, same key), qcow2 (same key if encrypted), raw (plaintext)",
		Description: "--to luks turns a qcow2+LUKS image into a raw LUKS1 volume that the same passphrase\n" +
			"opens (the keyslots are copied, the data re-encrypted in memory); a raw LUKS source is\n" +
			"copied as stored and needs no key. --to qcow2 writes a compact qcow2 (zero clusters\n" +
			"unallocated), qcow2+LUKS with the same keyslots when SOURCE is encrypted (LUKS1).\n" +
			"--to raw writes the plaintext disk (like cat). Only --to raw puts plaintext on disk.\n" +
			"A whole Glance image is checked against its checksum before the output counts as done.",
		ArgsUsage: "SOURCE",
		Flags: append(append(of.flags(),
			&cli.StringFlag{Name: "to", Destination: &to, Usage: "target format: luks, raw or qcow2 (qcow2+LUKS with the same keyslots for an encrypted SOURCE)"},
			nl.clusterSizeFlag(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "-", Destination: &outPath, Usage: "write to `FILE` (created atomically), a block device (in place), an RBD image (rbd:POOL/IMAGE) or - (stdout)"},
		), append(append(pf.flags(), ofl.flags()...), nk.flags()...)...),
		Action: func(c *cli.Context) (err error) {
			if err := sourceArg("export", c.Args().Slice()); err != nil {
				return err
			}
			spec := c.Args().First()
			to = strings.ToLower(to)
			switch to {
			case exportLUKS, exportRaw, exportQcow2:
			case "":
				return usageError("export: --to is required (luks, raw or qcow2)")
			default:
				return usageError("--to %q: want luks, raw or qcow2", to)
			}
			mode, err := pf.mode()
			if err != nil {
				return err
			}
			opts, err := of.options()
			if err != nil {
				return err
			}
			if err := checkOutput(outPath); err != nil {
				return err
			}
			if err := checkNotSource(spec, outPath); err != nil {
				return err
			}
			if err := nk.check(); err != nil {
				return err
			}
			if nk.set() && to != exportLUKS {
				return usageError("a new key (--new-passphrase-file, --new-key-file, --new-key-id, --new-key) needs --to luks")
			}
			// A raw LUKS volume exported to LUKS is its stored bytes: no
			// key is needed, so the image is opened as stored first.
			opts.StoredOnly = to == exportLUKS
			img, err := openImage(c.Context, spec, opts)
			if err != nil {
				return err
			}
			defer img.Close()
			if to == exportLUKS && !img.Info.Encrypted {
				return fmt.Errorf("%s: export --to luks: %w", spec, imgfs.ErrNotEncryptedView)
			}
			if !(to == exportLUKS && img.Info.Format == imgfs.FormatLUKS && img.Info.Safe) {
				if err := img.OpenDisk(c.Context); err != nil {
					return fmt.Errorf("%s: %w", spec, err)
				}
			}
			ctx, stop := interruptible(c.Context)
			defer stop()
			d := img.Disk
			var wopts qcowio.WriteOptions
			switch to {
			case exportQcow2:
				if wopts, err = img.Qcow2Encryption(); err != nil {
					return fmt.Errorf("%s: export --to qcow2: %w", spec, err)
				}
				if wopts.ClusterSize, err = nl.clusterBytes(); err != nil {
					return err
				}
			case exportLUKS:
				if !nk.set() {
					if d, err = img.RawLUKS(); err != nil {
						return fmt.Errorf("%s: export --to luks: %w", spec, err)
					}
					break
				}
				var k *newKey
				if k, err = nk.passphrase(ctx, of.source.cloud, "imgfs volume "+filepath.Base(outPath)); err != nil {
					return err
				}
				defer k.close()
				defer func() {
					if err != nil {
						k.abandon()
					}
				}()
				var slot int
				if d, slot, err = img.RawLUKSNewKey(ctx, k.pass, nk.rewrap()); err != nil {
					return fmt.Errorf("%s: export --to luks with a new key: %w", spec, err)
				}
				defer func() {
					if err != nil {
						return
					}
					if k.created != "" {
						w := os.Stdout
						if outPath == "" || outPath == "-" {
							w = os.Stderr
						}
						fmt.Fprintln(w, k.created)
					}
					fmt.Fprintf(os.Stderr, "imgfs: the volume key is wrapped under the new key in keyslot %d%s\n", slot, map[bool]string{true: " (old keyslots kept)", false: "; the old keyslots were removed"}[nk.keepOld])
				}()
			}
			prog := startProgress(mode, "export "+filepath.Base(spec), d.Size(), os.Stderr)
			defer func() { prog.Finish(err) }()
			out := ofl.output(outPath, prog)
			out.ceph = opts.Ceph
			if img.CanVerify() {
				out.verify = img.Verify
			}
			if w := img.IntegrityWarning(); w != "" {
				defer fmt.Fprintf(os.Stderr, "imgfs: warning: %s: %s\n", spec, w)
			}
			if to == exportQcow2 {
				return out.writeQcow2(ctx, d, wopts)
			}
			if _, err := out.write(ctx, d); err != nil {
				return fmt.Errorf("%s: %w", spec, err)
			}
			return nil
		},
	}
}
