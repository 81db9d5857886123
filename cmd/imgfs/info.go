package main

import (
	"os"

	"github.com/urfave/cli/v2"
)

func infoCommand() *cli.Command {
	var (
		of       openFlags
		jsonFlag bool
	)
	fl := of.storedFlags()
	return &cli.Command{
		Name:      "info",
		Usage:     "describe an image without a key: format, LUKS header, qcow2 features, safety verdict",
		ArgsUsage: "SOURCE",
		Flags:     append(fl, &cli.BoolFlag{Name: "json", Destination: &jsonFlag, Usage: "print JSON"}),
		Action: func(c *cli.Context) error {
			if err := sourceArg("info", c.Args().Slice()); err != nil {
				return err
			}
			opts, err := of.storedOptions()
			if err != nil {
				return err
			}
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
