package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/cloud"
	"github.com/imgfs/imgfs/keyring"
	"github.com/imgfs/imgfs/luksio"
)

// newKeyFlags give an exported LUKS volume a key of its own: the volume
// key is wrapped under a new passphrase in a fresh keyslot.
type newKeyFlags struct {
	passphraseFile, keyFile, keyID string
	create, keepOld                bool
	iterTime                       int
	iterations                     uint
}

func (n *newKeyFlags) flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "new-passphrase-file", Destination: &n.passphraseFile, Usage: "--to luks: wrap the volume key under the passphrase in `FILE` (one trailing newline stripped) in a fresh keyslot; the payload is not re-encrypted"},
		&cli.StringFlag{Name: "new-key-file", Destination: &n.keyFile, Usage: "--to luks: as --new-passphrase-file with a binary key `FILE` (its lowercase hex is the passphrase)"},
		&cli.StringFlag{Name: "new-key-id", Destination: &n.keyID, Usage: "--to luks: as --new-passphrase-file with the Barbican secret `ID` (passphrase type as-is, other types hex)"},
		&cli.BoolFlag{Name: "new-key", Destination: &n.create, Usage: "--to luks: create a new random symmetric Barbican secret (as upload does), wrap the volume key under its hex and print its id"},
		&cli.BoolFlag{Name: "keep-old-keyslots", Destination: &n.keepOld, Usage: "keep the existing keyslots beside the new one (default: remove them, wiping their key material)"},
		&cli.IntFlag{Name: "new-iter-time", Value: int(luksio.DefaultIterTime.Milliseconds()), Destination: &n.iterTime, Usage: "calibrate the new keyslot's PBKDF2 to `MS` milliseconds"},
		&cli.UintFlag{Name: "new-pbkdf-iterations", Destination: &n.iterations, Usage: "use exactly `N` PBKDF2 iterations (at least 1000) for the new keyslot"},
	}
}

// set reports whether a new key was asked for.
func (n *newKeyFlags) set() bool {
	return n.passphraseFile != "" || n.keyFile != "" || n.keyID != "" || n.create
}

// check validates the flags before anything is opened.
func (n *newKeyFlags) check() error {
	k := 0
	for _, on := range []bool{n.passphraseFile != "", n.keyFile != "", n.keyID != "", n.create} {
		if on {
			k++
		}
	}
	switch {
	case k > 1:
		return usageError("--new-passphrase-file, --new-key-file, --new-key-id and --new-key exclude each other")
	case k == 0 && n.keepOld:
		return usageError("--keep-old-keyslots needs a new key (--new-passphrase-file, --new-key-file, --new-key-id or --new-key)")
	case n.iterTime <= 0:
		return usageError("--new-iter-time %d: want a positive number of milliseconds", n.iterTime)
	case n.iterations != 0 && (n.iterations < luksio.MinPBKDF2Iterations || n.iterations > 1<<31-1):
		return usageError("--new-pbkdf-iterations %d: want %d to %d", n.iterations, luksio.MinPBKDF2Iterations, 1<<31-1)
	}
	return nil
}

// rewrap is the options of the new keyslot.
func (n *newKeyFlags) rewrap() luksio.RewrapOptions {
	return luksio.RewrapOptions{KeepOld: n.keepOld, Iterations: uint32(n.iterations), IterTime: time.Duration(n.iterTime) * time.Millisecond}
}

// newKey is a passphrase for a new keyslot. If it is a Barbican secret
// this run created, abandon deletes it (a failed export).
type newKey struct {
	pass    []byte
	created string // id of a secret created by this run
	kcloud  string
}

// close zeroes the passphrase.
func (k *newKey) close() { keyring.Zero(k.pass) }

// abandon deletes a secret this run created, saying so.
func (k *newKey) abandon() {
	if k.created == "" {
		return
	}
	ctx := context.Background()
	sess, err := cloud.Connect(ctx, k.kcloud)
	if err == nil {
		var kc *gophercloud.ServiceClient
		if kc, err = sess.KeyManager(); err == nil {
			err = cloud.DeleteSecret(ctx, kc, k.created)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "imgfs: warning: could not delete the barbican secret %s created for the failed export: %v\n", k.created, err)
		return
	}
	fmt.Fprintf(os.Stderr, "imgfs: deleted barbican secret %s created for the failed export\n", k.created)
}

// passphrase fetches or creates the new passphrase; cloudName is the
// clouds.yaml entry for Barbican.
func (n *newKeyFlags) passphrase(ctx context.Context, cloudName, name string) (*newKey, error) {
	switch {
	case n.passphraseFile != "":
		p, err := keyring.PassphraseFile{Path: n.passphraseFile}.Passphrase(ctx)
		if err != nil {
			return nil, fmt.Errorf("--new-passphrase-file: %w", err)
		}
		return &newKey{pass: p}, nil
	case n.keyFile != "":
		p, err := keyring.KeyFile{Path: n.keyFile}.Passphrase(ctx)
		if err != nil {
			return nil, fmt.Errorf("--new-key-file: %w", err)
		}
		return &newKey{pass: p}, nil
	}
	sess, err := cloud.Connect(ctx, cloudName)
	if err != nil {
		return nil, fmt.Errorf("new key: %w", err)
	}
	kc, err := sess.KeyManager()
	if err != nil {
		return nil, fmt.Errorf("new key: %w", err)
	}
	if n.keyID != "" {
		s, err := cloud.ExistingSecret(ctx, kc, n.keyID)
		if err != nil {
			return nil, fmt.Errorf("--new-key-id: %w", err)
		}
		return &newKey{pass: s.Passphrase}, nil
	}
	s, err := cloud.NewSymmetricSecret(ctx, kc, name, nil)
	if err != nil {
		return nil, fmt.Errorf("--new-key: %w", err)
	}
	return &newKey{pass: s.Passphrase, created: s.ID, kcloud: cloudName}, nil
}
