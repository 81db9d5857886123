package main

import (
	"os"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs"
)

func infoCommand() *cli.Command {
	var (
		of       openFlags
		jsonFlag bool
	)
	fl := append(of.format.flags("format", "state the outer format (raw, luks, qcow2); a mismatch with the image's magic is an error"), of.source.flags()...)
	return &cli.Command{
		Name:      "info",
		Usage:     "describe an image without a key: format, LUKS header, qcow2 features, safety verdict",
		ArgsUsage: "SOURCE",
		Flags:     append(fl, &cli.BoolFlag{Name: "json", Destination: &jsonFlag, Usage: "print JSON"}),
		Action: func(c *cli.Context) error {
			if err := sourceArg("info", c.Args().Slice()); err != nil {
				return err
			}
			var opts imgfs.Options
			if err := of.format.apply(&opts, "format", imgfs.FormatRaw, imgfs.FormatLUKS, imgfs.FormatQcow2); err != nil {
				return err
			}
			if err := of.source.apply(&opts); err != nil {
				return err
			}
			opts.StoredOnly = true
			img, err := openImage(c.Context, c.Args().First(), opts)
			if err != nil {
				return err
			}
			defer img.Close()
			if jsonFlag {
				return printJSON(img.Info)
			}
			printInfo(os.Stdout, img.Info)
			return nil
		},
	}
}
