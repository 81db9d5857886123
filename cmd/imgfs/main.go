// Command imgfs reads OpenStack Glance images — raw, qcow2, raw LUKS and
// qcow2+LUKS — lazily and decrypts them in user space.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// Exit codes.
const (
	exitError  = 1 // any failure
	exitUsage  = 2 // bad command line
	exitUnsafe = 3 // inspect: the image is unsafe
)

func main() {
	harden() // before any key is read: no core dumps, not dumpable
	os.Exit(run(os.Args))
}

func run(args []string) int {
	app := newApp()
	if err := app.Run(args); err != nil {
		err = withHints(err)
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, "imgfs:", msg)
			}
			return ec.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "imgfs:", err)
		return exitError
	}
	return 0
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "imgfs",
		Usage: "read encrypted OpenStack images (raw, qcow2, LUKS, qcow2+LUKS) lazily, decrypted in user space",
		Description: "SOURCE is a local file, an http(s):// URL, or a Glance image id (glance:ID).\n" +
			"Keys are never taken from the command line: use\n" +
			"--passphrase-file (- for stdin), --key-file (binary key, hex-encoded as OpenStack does)\n" +
			"or Barbican (--key-id, else the image's os_encrypt_key_id).",
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // run() prints errors once
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return cli.Exit(err.Error(), exitUsage)
		},
		Commands: commands(),
	}
}

// usageError reports a bad command line with exit code 2.
func usageError(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitUsage)
}
