package main

import (
	"errors"
	"fmt"

	"github.com/imgfs/imgfs/luksio"
)

// withHints adds to err what the user can do about it: a keyslot refused
// for its KDF cost names the flags that raise the limits.
func withHints(err error) error {
	if errors.Is(err, luksio.ErrKDFTooExpensive) {
		return fmt.Errorf("%w (the limits protect against crafted headers; raise them with --max-kdf-memory, --max-kdf-iterations or --max-kdf-time if you trust the image)", err)
	}
	return err
}
