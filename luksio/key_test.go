package luksio

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestKeyIsRedactedAndZeroed proves that no formatting verb prints the
// volume key, and that Close zeroes it and disables Cipher.
func TestKeyIsRedactedAndZeroed(t *testing.T) {
	raw := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	k := &Key{key: append([]byte(nil), raw...), slot: 3, spec: "aes-xts-plain64", sectorSize: 512}
	backing := k.key
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		out := fmt.Sprintf(verb, k)
		if strings.Contains(out, "0123456789") || strings.Contains(out, hex.EncodeToString(raw[:8])) || !strings.Contains(out, "redacted") {
			t.Errorf("%s prints %q", verb, out)
		}
	}
	if k.String() != "luksio.Key(redacted)" || k.GoString() != "luksio.Key(redacted)" {
		t.Errorf("String %q GoString %q", k.String(), k.GoString())
	}
	if _, err := k.Cipher(); err != nil {
		t.Fatal(err)
	}
	k.Close()
	for i, b := range backing {
		if b != 0 {
			t.Fatalf("byte %d of the key survived Close", i)
		}
	}
	if _, err := k.Cipher(); err == nil {
		t.Fatal("Cipher after Close: want an error")
	}
}

// TestHeaderJSON proves that the JSON form of a header (imgfs info --json)
// carries the public fields and no salts or digests.
func TestHeaderJSON(t *testing.T) {
	h := &Header{Version: 2, UUID: "u", CipherSpec: "aes-xts-plain64", KeyBytes: 64, SectorSize: 4096,
		Keyslots: []Keyslot{{Index: 1, KDF: "argon2id", salt: []byte("SALTSALT")}},
		digests:  []digest{{value: []byte("DIGESTDIGEST"), salt: []byte("DSALT")}}}
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"version":2`, `"cipher":"aes-xts-plain64"`, `"sector_size":4096`, `"kdf":"argon2id"`} {
		if !strings.Contains(s, want) {
			t.Errorf("JSON lacks %s: %s", want, s)
		}
	}
	for _, secret := range []string{"SALT", "DIGEST", "U0FMVF", "RElHRVNU"} {
		if strings.Contains(s, secret) {
			t.Errorf("JSON leaks %s: %s", secret, s)
		}
	}
}
