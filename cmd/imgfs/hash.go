package main

import (
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs"
)

func hashCommand() *cli.Command {
	var (
		of       openFlags
		algo     string
		jsonFlag bool
	)
	return &cli.Command{
		Name:  "hash",
		Usage: "hash the stored image and its plaintext in one pass, for evidence records (checks Glance's checksum too)",
		Description: "Prints the hash of the image as stored (its ciphertext, if encrypted) and of the plaintext\n" +
			"disk. A Glance image is also checked against its os_hash_value (or checksum); a mismatch\n" +
			"is an error.",
		ArgsUsage: "SOURCE",
		Flags: append(of.flags(),
			&cli.StringFlag{Name: "algo", Value: "sha256", Destination: &algo, Usage: "hash `ALGORITHM`: sha256 or sha512"},
			&cli.BoolFlag{Name: "json", Destination: &jsonFlag, Usage: "print JSON (with the image id, sizes, time and algorithms)"},
		),
		Action: func(c *cli.Context) error {
			if err := sourceArg("hash", c.Args().Slice()); err != nil {
				return err
			}
			spec := c.Args().First()
			if _, ok := imgfs.DigestAlgorithms[algo]; !ok {
				return usageError("--algo %q: want sha256 or sha512", algo)
			}
			opts, err := of.options()
			if err != nil {
				return err
			}
			img, err := openImage(c.Context, spec, opts)
			if err != nil {
				return err
			}
			defer img.Close()
			ctx, stop := interruptible(c.Context)
			defer stop()
			started := time.Now().UTC()
			d, err := img.Digest(ctx, algo)
			if err != nil {
				return fmt.Errorf("%s: %w", spec, err)
			}
			if jsonFlag {
				return printJSON(struct {
					Source   string         `json:"source"`
					ImageID  any            `json:"image_id,omitempty"`
					Format   string         `json:"format"`
					Encrypt  bool           `json:"encrypted"`
					Started  time.Time      `json:"started"`
					Finished time.Time      `json:"finished"`
					Origin   map[string]any `json:"origin,omitempty"`
					*imgfs.Digests
				}{spec, img.Info.Source["image_id"], img.Info.Format, img.Info.Encrypted, started, time.Now().UTC(), img.Info.Source, d})
			}
			fmt.Printf("%s  stored (%s, %d bytes)\n", d.Stored, d.Algorithm, d.StoredSize)
			fmt.Printf("%s  plaintext (%s, %d bytes)\n", d.Plaintext, d.Algorithm, d.PlaintextSize)
			if d.SourceVerified {
				fmt.Fprintf(os.Stderr, "imgfs: stored image matches the source's %s checksum\n", safeText(d.SourceChecksum))
			}
			if d.Warning != "" {
				fmt.Fprintf(os.Stderr, "imgfs: warning: %s\n", d.Warning)
			}
			return nil
		},
	}
}
