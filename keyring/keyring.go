// Package keyring turns "where the key is" into LUKS passphrase bytes: a
// passphrase file or standard input, or a binary key file. Barbican secrets
// (package cloud) follow the same rule through PassphraseFromSecret.
//
// Binary keys become passphrases by the os-brick rule: a secret of type
// "passphrase" is used as it is; any other secret is binary and its
// passphrase is the lowercase hex of its bytes (binascii.hexlify). QEMU hands
// passphrases to LUKS with strlen, so binary keys could not carry NUL bytes.
package keyring

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
)

// MaxKeyFileSize bounds what imgfs reads from a passphrase or key file.
const MaxKeyFileSize = 64 << 10

// ErrEmptyPassphrase means a passphrase source produced no bytes.
var ErrEmptyPassphrase = errors.New("empty passphrase")

// Source yields a LUKS passphrase. The caller owns the returned slice and
// must Zero it once the volume is unlocked.
type Source interface {
	// Passphrase returns the passphrase bytes.
	Passphrase(ctx context.Context) ([]byte, error)
	// String names the source for messages, never its contents.
	String() string
}

// Zero overwrites b with zeros. Go's garbage collector may have copied the
// bytes before; Zero shortens the time they are readable, it cannot promise
// that no copy exists.
func Zero(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// PassphraseFromSecret applies the os-brick rule to a secret's payload:
// type "passphrase" is the passphrase as-is, anything else is binary and
// becomes its lowercase hex encoding. The payload is not modified.
func PassphraseFromSecret(secretType string, payload []byte) []byte {
	if secretType == "passphrase" {
		return bytes.Clone(payload)
	}
	out := make([]byte, hex.EncodedLen(len(payload)))
	hex.Encode(out, payload)
	return out
}

// PassphraseFile reads a passphrase from a file, or from standard input when
// the path is "-". A single trailing newline ("\n" or "\r\n") is stripped, so
// `echo secret > f` works; any other byte is part of the passphrase.
type PassphraseFile struct {
	Path  string
	Stdin io.Reader // standard input for Path "-"; os.Stdin when nil
}

// Passphrase implements Source.
func (p PassphraseFile) Passphrase(context.Context) ([]byte, error) {
	b, err := p.read()
	if err != nil {
		return nil, err
	}
	switch {
	case bytes.HasSuffix(b, []byte("\r\n")):
		Zero(b[len(b)-2:])
		b = b[:len(b)-2]
	case bytes.HasSuffix(b, []byte("\n")):
		b[len(b)-1] = 0
		b = b[:len(b)-1]
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%s: %w", p, ErrEmptyPassphrase)
	}
	return b, nil
}

func (p PassphraseFile) read() ([]byte, error) {
	if p.Path == "-" {
		in := p.Stdin
		if in == nil {
			in = os.Stdin
		}
		return readBounded(in, "standard input")
	}
	return readFileBounded(p.Path)
}

func (p PassphraseFile) String() string {
	if p.Path == "-" {
		return "passphrase from standard input"
	}
	return "passphrase file " + p.Path
}

// KeyFile reads binary key bytes from a file ("-" for standard input) and
// turns them into the passphrase by the os-brick rule (lowercase hex). This
// is what a Barbican secret of type "symmetric" or "opaque" holds.
type KeyFile struct {
	Path  string
	Stdin io.Reader
}

// Passphrase implements Source.
func (k KeyFile) Passphrase(ctx context.Context) ([]byte, error) {
	b, err := k.Key(ctx)
	if err != nil {
		return nil, err
	}
	defer Zero(b)
	return PassphraseFromSecret("symmetric", b), nil
}

// Key returns the binary key bytes themselves (to store them in
// Barbican, for instance). The caller must Zero them.
func (k KeyFile) Key(context.Context) ([]byte, error) {
	var b []byte
	var err error
	if k.Path == "-" {
		in := k.Stdin
		if in == nil {
			in = os.Stdin
		}
		b, err = readBounded(in, "standard input")
	} else {
		b, err = readFileBounded(k.Path)
	}
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%s: %w", k, ErrEmptyPassphrase)
	}
	return b, nil
}

func (k KeyFile) String() string { return "key file " + k.Path }

func readFileBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // *PathError names the path, never contents
	}
	defer f.Close()
	return readBounded(f, path)
}

func readBounded(r io.Reader, name string) ([]byte, error) {
	buf := make([]byte, MaxKeyFileSize+1)
	n, err := io.ReadFull(r, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		Zero(buf)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if n > MaxKeyFileSize {
		Zero(buf)
		return nil, fmt.Errorf("%s: longer than %d bytes: not a key", name, MaxKeyFileSize)
	}
	return buf[:n:n], nil
}
