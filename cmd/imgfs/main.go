// Command imgfs reads OpenStack Glance images — raw, qcow2, raw LUKS and
// qcow2+LUKS — lazily and decrypts them in user space. It parses flags and
// prints; the work is done by the imgfs package (github.com/imgfs/imgfs).
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"

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
	if err := app.Run(reorderArgs(app, args)); err != nil {
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
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintln(c.App.Writer, "imgfs", c.App.Version) }
	return &cli.App{
		Name:    "imgfs",
		Version: version(),
		Usage:   "read encrypted OpenStack images (raw, qcow2, LUKS, qcow2+LUKS) lazily, decrypted in user space",
		Description: "SOURCE is a local file, an http(s):// URL, or a Glance image id (glance:ID).\n" +
			"Keys are never taken from the command line: use\n" +
			"--passphrase-file (- for stdin), --key-file (binary key, hex-encoded as OpenStack does)\n" +
			"or Barbican (--key-id, else the image's os_encrypt_key_id).\n" +
			"Flags may come before or after SOURCE; -- ends them.",
		HideHelpCommand:      true,
		EnableBashCompletion: true,
		ExitErrHandler:       func(*cli.Context, error) {}, // run() prints errors once
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return cli.Exit(err.Error(), exitUsage)
		},
		Commands: []*cli.Command{
			infoCommand(), catCommand(), inspectCommand(),
			mountCommand(), umountCommand(),
			exportCommand(), encryptCommand(), uploadCommand(),
			hashCommand(), mapCommand(), completionCommand(),
		},
	}
}

// usageError reports a bad command line with exit code 2.
func usageError(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitUsage)
}

// version is the module version, the commit and the Go version the binary
// was built from.
func version() string {
	v, commit, dirty, goVersion := "(devel)", "unknown", "", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
	}
	if len(commit) > 12 {
		commit = commit[:12]
	}
	return fmt.Sprintf("%s (commit %s%s, %s)", v, commit, dirty, goVersion)
}

// reorderArgs moves a command's flags before its arguments, so that
// `imgfs cat img.luks --passphrase-file pw -o out` works: urfave/cli stops
// at the first argument. A flag's value stays with it; `--` still ends the
// flags, and what follows it stays an argument.
func reorderArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	var cmd *cli.Command
	for _, c := range app.Commands {
		if c.HasName(args[1]) {
			cmd = c
		}
	}
	if cmd == nil {
		return args
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	var flags, positional []string
	rest := args[2:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		switch {
		case a == "--":
			positional = append(positional, rest[i+1:]...)
			i = len(rest)
		case len(a) > 1 && a[0] == '-':
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && takesValue[name] && i+1 < len(rest) {
				flags = append(flags, rest[i+1])
				i++
			}
		default:
			positional = append(positional, a)
		}
	}
	out := append([]string{args[0], args[1]}, flags...)
	if len(positional) > 0 {
		out = append(append(out, "--"), positional...)
	}
	return out
}

// completionScript makes bash complete imgfs's commands and flags through
// urfave/cli's --generate-bash-completion.
const completionScript = `# imgfs bash completion: source <(imgfs completion bash)
_imgfs_complete() {
  local cur opts
  cur="${COMP_WORDS[COMP_CWORD]}"
  if [[ "$cur" == "-"* ]]; then
    opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
  [[ ${#COMPREPLY[@]} -eq 0 ]] && compopt -o default
  return 0
}
complete -o bashdefault -F _imgfs_complete imgfs
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: source <(imgfs completion bash)",
		ArgsUsage: "bash",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 || c.Args().First() != "bash" {
				return usageError("completion: want bash")
			}
			fmt.Print(completionScript)
			return nil
		},
	}
}
