package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/cmd/imgfs/internal/image"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
	"github.com/imgfs/imgfs/qcowio"
)

// keyFlags select where the passphrase comes from. None takes the key itself.
func keyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "passphrase-file", Usage: "read the LUKS passphrase from `FILE` (- = stdin; one trailing newline is stripped)"},
		&cli.StringFlag{Name: "key-file", Usage: "read a binary key from `FILE` (- = stdin); its lowercase hex is the passphrase (OpenStack's rule)"},
		&cli.IntFlag{Name: "key-slot", Value: -1, Usage: "try only keyslot `N` (default: every active slot)"},
		&cli.StringFlag{Name: "max-kdf-memory", Value: "4GiB", Usage: "refuse argon2 keyslots needing more than `SIZE` of memory"},
		&cli.Uint64Flag{Name: "max-kdf-iterations", Value: luksio.DefaultMaxKDFIterations, Usage: "refuse PBKDF2 keyslots and digests with more than `N` iterations"},
		&cli.Uint64Flag{Name: "max-kdf-time", Value: luksio.DefaultMaxKDFTime, Usage: "refuse argon2 keyslots with more than `N` passes"},
	}
}

// unlockOptions reads the keyslot and KDF limit flags.
func unlockOptions(c *cli.Context) (luksio.UnlockOptions, error) {
	o := luksio.UnlockOptions{Slot: c.Int("key-slot")}
	if s := c.String("max-kdf-memory"); s != "" {
		n, err := parseSize(s)
		if err != nil || n < 1024 || n/1024 > math.MaxUint32 {
			return o, usageError("--max-kdf-memory %q: want a size from 1KiB to below 4TiB", s)
		}
		o.MaxKDFMemoryKiB = uint32(n / 1024)
	}
	for _, f := range []struct {
		name string
		dst  *uint32
	}{{"max-kdf-iterations", &o.MaxKDFIterations}, {"max-kdf-time", &o.MaxKDFTime}} {
		if !c.IsSet(f.name) {
			continue
		}
		n := c.Uint64(f.name)
		if n < 1 || n > math.MaxUint32 {
			return o, usageError("--%s %d: want 1 to %d", f.name, n, uint64(math.MaxUint32))
		}
		*f.dst = uint32(n)
	}
	return o, nil
}

// formatFlags describe the image.
func formatFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "format", Usage: "state the outer format (raw, luks, qcow2); a mismatch with the image's magic is an error"},
		&cli.BoolFlag{Name: "allow-dirty", Usage: "accept a qcow2 image whose dirty bit is set"},
	}
}

// keySource returns the key source the flags name, or nil for none.
func keySource(c *cli.Context) (keyring.Source, error) {
	pf, kf := c.String("passphrase-file"), c.String("key-file")
	switch {
	case pf != "" && kf != "":
		return nil, usageError("--passphrase-file and --key-file exclude each other")
	case pf != "":
		return keyring.PassphraseFile{Path: pf}, nil
	case kf != "":
		return keyring.KeyFile{Path: kf}, nil
	}
	return nil, nil
}

// openOptions collects image.Options from the flags.
func openOptions(c *cli.Context) (image.Options, error) {
	key, err := keySource(c)
	if err != nil {
		return image.Options{}, err
	}
	unlock, err := unlockOptions(c)
	if err != nil {
		return image.Options{}, err
	}
	format := strings.ToLower(c.String("format"))
	switch format {
	case "", image.FormatRaw, image.FormatLUKS, image.FormatQcow2:
	default:
		return image.Options{}, usageError("--format %q: want raw, luks or qcow2", c.String("format"))
	}
	return image.Options{
		Format: format,
		Key:    key,
		Unlock: unlock,
		Policy: qcowio.Policy{AllowDirty: c.Bool("allow-dirty")},
	}, nil
}

// parseSize reads a byte count. A bare K, M, G, T, P or E suffix is binary
// (as in dd and qemu-img: 1M = 1048576); KB, MB... are decimal and KiB,
// MiB... binary, as go-humanize reads them.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("size %q is negative", s)
		}
		return n, nil
	}
	last := rune(s[len(s)-1])
	if unicode.IsLetter(last) && strings.ContainsRune("kmgtpeKMGTPE", last) {
		if len(s) < 2 || !unicode.IsDigit(rune(s[len(s)-2])) && s[len(s)-2] != ' ' && s[len(s)-2] != '.' {
			return 0, fmt.Errorf("size %q: bad number", s)
		}
		s += "iB"
	}
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	if n > 1<<62 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(n), nil
}
