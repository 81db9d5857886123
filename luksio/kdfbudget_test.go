package luksio

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgfs/imgfs/tests/testimg"
)

// kdfCounter sums the KDF work Unlock reports through kdfWork.
type kdfCounter struct {
	mu             sync.Mutex
	pbkdf2, argon2 uint64
	runs           int
}

// countKDF installs a kdfCounter for the rest of the test.
func countKDF(t *testing.T) *kdfCounter {
	c := &kdfCounter{}
	kdfWork = func(kdf string, work uint64) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.runs++
		if kdf == "pbkdf2" {
			c.pbkdf2 += work
		} else {
			c.argon2 += work
		}
	}
	t.Cleanup(func() { kdfWork = nil })
	return c
}

func (c *kdfCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pbkdf2, c.argon2, c.runs = 0, 0, 0
}

// manySlots formats a LUKS2 image with cryptsetup and fills all 32 keyslots
// with kdfArgs: slot i opens with slotPass(i), the last one (31) with
// luks1Pass.
func manySlots(t *testing.T, name string, kdfArgs ...string) (string, *Header) {
	t.Helper()
	testimg.Need(t, "cryptsetup")
	p := filepath.Join(t.TempDir(), name)
	testimg.CryptsetupFormat(t, p, 17<<20, slotPass(0), append([]string{"--type", "luks2", "--key-size", "256", "--hash", "sha256"}, kdfArgs...)...)
	for i := 1; i < 32; i++ {
		pass := slotPass(i)
		if i == 31 {
			pass = luks1Pass
		}
		testimg.CryptsetupAddKey(t, p, slotPass(0), pass, append([]string{"--key-slot", fmt.Sprint(i)}, kdfArgs...)...)
	}
	f := openFile(t, p)
	h, err := ReadHeader(f, f.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Keyslots) != 32 {
		t.Fatalf("%d keyslots, want 32", len(h.Keyslots))
	}
	return p, h
}

func slotPass(i int) string { return fmt.Sprintf("slot-%d-passphrase", i) }

// TestUnlockKDFBudgetPerUnlock: the KDF limits bound one unlock, not each
// keyslot. A cryptsetup-made LUKS2 header with 32 PBKDF2 keyslots, each
// (with the digest) within --max-kdf-iterations but all together 8 times
// over it, with the passphrase in the last slot: Unlock refuses the slot
// that would overdraw the budget, names the budget, and the PBKDF2
// iterations actually run stay within the limit. The same for 32 argon2id
// slots against memory × passes. The passphrase of slot 0 still opens
// under the same limits, and with the default limits the last slot opens.
func TestUnlockKDFBudgetPerUnlock(t *testing.T) {
	for _, c := range []struct {
		name    string
		kdfArgs []string
		limits  func(h *Header) UnlockOptions
		work    func(c *kdfCounter) uint64
		budget  func(o UnlockOptions) uint64
		want    string
	}{{
		name:    "pbkdf2",
		kdfArgs: []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "20000"},
		limits: func(h *Header) UnlockOptions {
			perSlot := h.Keyslots[0].Iterations + h.digests[0].iterations
			return UnlockOptions{Slot: AnySlot, MaxKDFIterations: 4 * perSlot}
		},
		work:   func(c *kdfCounter) uint64 { return c.pbkdf2 },
		budget: func(o UnlockOptions) uint64 { return uint64(o.MaxKDFIterations) },
		want:   "exceed what is left of the unlock's budget of",
	}, {
		name:    "argon2id",
		kdfArgs: []string{"--pbkdf", "argon2id", "--pbkdf-memory", "64", "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1"},
		// 64 KiB × 16 passes: four slots of 64 KiB × 4.
		limits: func(*Header) UnlockOptions { return UnlockOptions{Slot: AnySlot, MaxKDFMemoryKiB: 64, MaxKDFTime: 16} },
		work:   func(c *kdfCounter) uint64 { return c.argon2 },
		budget: func(o UnlockOptions) uint64 { return uint64(o.MaxKDFMemoryKiB) * uint64(o.MaxKDFTime) },
		want:   "exceeds what is left of the unlock's argon2 budget of 1024 KiB-passes",
	}} {
		t.Run(c.name, func(t *testing.T) {
			p, h := manySlots(t, c.name+".luks2", c.kdfArgs...)
			f := openFile(t, p)
			n := countKDF(t)
			opts := c.limits(h)

			start := time.Now()
			k, err := h.Unlock(f, []byte(luks1Pass), opts)
			took := time.Since(start)
			if err == nil {
				k.Close()
				t.Fatalf("unlocked through keyslot %d spending %d of a budget of %d (%d KDF runs): the limits bound each slot, not the unlock",
					k.Slot(), c.work(n), c.budget(opts), n.runs)
			}
			if !errors.Is(err, ErrKDFTooExpensive) || !errors.Is(err, ErrWrongPassphrase) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v; want ErrKDFTooExpensive naming %q (and ErrWrongPassphrase for the slots tried)", err, c.want)
			}
			if w := c.work(n); w > c.budget(opts) {
				t.Fatalf("spent %d of a budget of %d", w, c.budget(opts))
			}
			if n.runs > 8 { // 4 slots: the slot KDF and the digest each
				t.Fatalf("%d KDF runs, want at most 8", n.runs)
			}
			t.Logf("refused in %v after %d KDF runs, %d of a budget of %d: %v", took.Round(time.Millisecond), n.runs, c.work(n), c.budget(opts), firstError(err))

			// The normal case: the passphrase of the first slot opens
			// within the same limits.
			n.reset()
			k, err = h.Unlock(f, []byte(slotPass(0)), opts)
			if err != nil {
				t.Fatalf("slot 0 passphrase under the same limits: %v", err)
			}
			if k.Slot() != 0 {
				t.Fatalf("opened slot %d, want 0", k.Slot())
			}
			k.Close()

			// The default limits admit all 32 slots: the passphrase is
			// really in the last one.
			k, err = h.Unlock(f, []byte(luks1Pass), UnlockOptions{Slot: AnySlot})
			if err != nil {
				t.Fatalf("default limits: %v", err)
			}
			if k.Slot() != 31 {
				t.Fatalf("opened slot %d, want 31", k.Slot())
			}
			k.Close()
		})
	}
}

func firstError(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// PBKDF2 work counts the key's hash-sized blocks: a 512-bit keyslot key
// from sha1 (20-byte blocks) costs 4 times its iterations, so a header
// cannot run 4 times the budget by choosing a short hash and a long key.
// (The budget used to count the stated iterations only.)
func TestKDFBudgetCountsOutputBlocks(t *testing.T) {
	testimg.Need(t, "cryptsetup")
	p := filepath.Join(t.TempDir(), "sha1.luks")
	testimg.CryptsetupFormat(t, p, 4<<20, luks1Pass, "--type", "luks1", "--hash", "sha1", "--key-size", "512", "--pbkdf-force-iterations", "5000")
	f := openFile(t, p)
	h, err := ReadHeader(f, f.Size())
	if err != nil {
		t.Fatal(err)
	}
	slot, digest := uint64(h.Keyslots[0].Iterations), uint64(h.digests[0].iterations)
	// Enough for the stated iterations, not for the work they cause.
	stated := UnlockOptions{Slot: -1, MaxKDFIterations: uint32(slot + digest)}
	if _, err := h.Unlock(f, []byte(luks1Pass), stated); !errors.Is(err, ErrKDFTooExpensive) {
		t.Fatalf("unlock within the stated iterations but 4x their work: %v, want ErrKDFTooExpensive", err)
	}
	c := countKDF(t)
	work := UnlockOptions{Slot: -1, MaxKDFIterations: uint32(4*slot + digest)}
	k, err := h.Unlock(f, []byte(luks1Pass), work)
	if err != nil {
		t.Fatal(err)
	}
	k.Close()
	if c.pbkdf2 != 4*slot+digest {
		t.Fatalf("counted %d PBKDF2 block-iterations, want %d", c.pbkdf2, 4*slot+digest)
	}
}
