package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs"
)

func mapCommand() *cli.Command {
	var (
		of       openFlags
		jsonFlag bool
	)
	fl := of.storedFlags()
	return &cli.Command{
		Name:      "map",
		Usage:     "list the plaintext disk's extents (data, zero, hole) and their place in the stored image; no key needed",
		ArgsUsage: "SOURCE",
		Description: "--json prints what `qemu-img map --output=json` prints (start, length, depth, present,\n" +
			"zero, data, offset), plus \"compressed\": true for compressed qcow2 clusters.",
		Flags: append(fl, &cli.BoolFlag{Name: "json", Destination: &jsonFlag, Usage: "print JSON as qemu-img map --output=json does"}),
		Action: func(c *cli.Context) error {
			if err := sourceArg("map", c.Args().Slice()); err != nil {
				return err
			}
			spec := c.Args().First()
			opts, err := of.storedOptions()
			if err != nil {
				return err
			}
			img, err := openImage(c.Context, spec, opts)
			if err != nil {
				return err
			}
			defer img.Close()
			if !img.Info.Safe {
				return fmt.Errorf("%s: the image is unsafe: %s", spec, safeText(fmt.Sprint(img.Info.Reasons)))
			}
			w := bufio.NewWriter(os.Stdout)
			n := 0
			if jsonFlag {
				fmt.Fprint(w, "[")
			} else {
				fmt.Fprintf(w, "%-16s %-16s %-16s %s\n", "Offset", "Length", "Mapped to", "Kind")
			}
			err = img.Map(c.Context, func(e imgfs.MapExtent) error {
				if jsonFlag {
					b, err := json.Marshal(e)
					if err != nil {
						return err
					}
					if n > 0 {
						fmt.Fprint(w, ",\n")
					}
					_, err = w.Write(b)
					n++
					return err
				}
				kind := "hole"
				switch {
				case e.Compressed:
					kind = "data (compressed)"
				case e.Data:
					kind = "data"
				case e.Zero && e.Present:
					kind = "zero"
				}
				to := "-"
				if e.Offset != nil {
					to = fmt.Sprintf("%#x", *e.Offset)
				}
				_, err := fmt.Fprintf(w, "%#-16x %#-16x %-16s %s\n", e.Start, e.Length, to, kind)
				return err
			})
			if jsonFlag {
				fmt.Fprint(w, "]\n")
			}
			if ferr := w.Flush(); err == nil && ferr != nil {
				return fmt.Errorf("write: %w", ferr)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", spec, err)
			}
			return nil
		},
	}
}
