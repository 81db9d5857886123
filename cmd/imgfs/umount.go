package main

import (
	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/fusefs"
)

func umountCommand() *cli.Command {
	var lazy bool
	return &cli.Command{
		Name:      "umount",
		Usage:     "unmount an imgfs mount (also one left behind by a killed imgfs)",
		ArgsUsage: "MOUNTPOINT",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "lazy", Aliases: []string{"z"}, Destination: &lazy, Usage: "if the mount is busy, detach it now and let it go when the last file is closed"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError("umount: want MOUNTPOINT")
			}
			return fusefs.Unmount(c.Args().First(), lazy)
		},
	}
}
