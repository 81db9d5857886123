package keyring

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPassphraseFromSecretFollowsOsBrick(t *testing.T) {
	// Values worked out by hand from os-brick's rule: binascii.hexlify(payload).decode('utf-8').
	cases := []struct {
		name, typ string
		payload   []byte
		want      string
	}{
		{"passphrase type is verbatim", "passphrase", []byte("Hunter2 \xff"), "Hunter2 \xff"},
		{"symmetric is lowercase hex", "symmetric", []byte{0x00, 0xAB, 0x10, 0xFF}, "00ab10ff"},
		{"opaque is lowercase hex", "opaque", []byte("ab"), "6162"},
		{"empty type is binary", "", []byte{0xDE, 0xAD}, "dead"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := PassphraseFromSecret(c.typ, c.payload); string(got) != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestPassphraseFileStripsOneNewline(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"secret\n":     "secret",
		"secret\r\n":   "secret",
		"secret\n\n":   "secret\n",
		"secret":       "secret",
		" sp ace \t\n": " sp ace \t",
	}
	i := 0
	for content, want := range cases {
		i++
		p := filepath.Join(dir, "pf"+string(rune('a'+i)))
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := PassphraseFile{Path: p}.Passphrase(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%q: got %q, want %q", content, got, want)
		}
	}
}

func TestPassphraseFromStdin(t *testing.T) {
	got, err := PassphraseFile{Path: "-", Stdin: strings.NewReader("from-stdin\n")}.Passphrase(context.Background())
	if err != nil || string(got) != "from-stdin" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestEmptyPassphraseIsAnError(t *testing.T) {
	_, err := PassphraseFile{Path: "-", Stdin: strings.NewReader("\n")}.Passphrase(context.Background())
	if !errors.Is(err, ErrEmptyPassphrase) {
		t.Fatalf("got %v, want ErrEmptyPassphrase", err)
	}
}

func TestKeyFileIsHexEncoded(t *testing.T) {
	p := filepath.Join(t.TempDir(), "key")
	key := []byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x0a} // trailing 0x0a is key material, not a newline
	if err := os.WriteFile(p, key, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := KeyFile{Path: p}.Passphrase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "0123456789abcdef0a" {
		t.Fatalf("got %q", got)
	}
}

func TestOversizedKeyFileIsRefusedWithoutEcho(t *testing.T) {
	big := bytes.Repeat([]byte("S"), MaxKeyFileSize+1)
	_, err := PassphraseFile{Path: "-", Stdin: bytes.NewReader(big)}.Passphrase(context.Background())
	if err == nil {
		t.Fatal("oversized passphrase accepted")
	}
	if strings.Contains(err.Error(), "SSSS") {
		t.Fatalf("error echoes key material: %v", err)
	}
}

func TestMissingFileErrorNamesPath(t *testing.T) {
	_, err := PassphraseFile{Path: "/nonexistent/pf"}.Passphrase(context.Background())
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/pf") {
		t.Fatalf("got %v", err)
	}
}

func TestZero(t *testing.T) {
	b := []byte("secret")
	Zero(b)
	if !bytes.Equal(b, make([]byte, 6)) {
		t.Fatalf("not zeroed: %q", b)
	}
}
