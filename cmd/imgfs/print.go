package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/imgfs/imgfs"
)

// safeText escapes control characters (ESC, OSC, newlines, ...) so that
// text taken from an image or its metadata cannot drive the terminal.
func safeText(v any) string {
	s := fmt.Sprint(v)
	clean := true
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\ufffd' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	q := strconv.QuoteToGraphic(s)
	return q[1 : len(q)-1]
}

// printJSON prints v as indented JSON: exact values, escaped by JSON.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printInfo(w io.Writer, info *imgfs.Info) {
	kv := func(k string, v any) { fmt.Fprintf(w, "%-22s %s\n", k+":", safeText(v)) }
	kv("format", info.Format)
	kv("encrypted", info.Encrypted)
	kv("source size", sizeString(info.SourceSize))
	kv("virtual size", sizeString(info.VirtualSize))
	if q := info.Qcow2; q != nil {
		kv("qcow2 version", q.Version)
		kv("cluster size", sizeString(q.ClusterSize))
		kv("encryption", q.Encryption)
		kv("compression type", q.CompressionType)
		kv("extended L2", q.ExtendedL2)
		kv("allocated", sizeString(q.AllocatedBytes))
		if len(q.IncompatibleFeatures) > 0 {
			kv("incompatible features", strings.Join(q.IncompatibleFeatures, ", "))
		}
		if len(q.CompatibleFeatures) > 0 {
			kv("compatible features", strings.Join(q.CompatibleFeatures, ", "))
		}
		if q.BackingFile != "" {
			kv("backing file", q.BackingFile)
		}
		if q.DataFile != "" {
			kv("data file", q.DataFile)
		}
	}
	if h := info.LUKS; h != nil {
		kv("LUKS version", h.Version)
		kv("UUID", h.UUID)
		kv("cipher", h.CipherSpec)
		kv("key size", fmt.Sprintf("%d bits", h.KeyBytes*8))
		kv("sector size", h.SectorSize)
		if info.Qcow2 == nil {
			// In qcow2+LUKS the header's payload fields are unused: the
			// clusters are the payload.
			kv("payload offset", h.PayloadOffset)
			kv("payload size", sizeString(h.PayloadSize))
		}
		if h.UsedSecondary {
			kv("header", "primary header corrupt: using the secondary copy")
		}
		for _, s := range h.Keyslots {
			cost := fmt.Sprintf("%d iterations", s.Iterations)
			if s.KDF != "pbkdf2" {
				cost = fmt.Sprintf("time %d, memory %d KiB, %d threads", s.Iterations, s.MemoryKiB, s.Parallel)
			}
			kv(fmt.Sprintf("keyslot %d", s.Index), fmt.Sprintf("%s (%s)", s.KDF, cost))
		}
	}
	printSource(w, info.Source)
	if info.Safe {
		kv("verdict", "safe")
	} else {
		kv("verdict", "UNSAFE")
		for _, r := range info.Reasons {
			fmt.Fprintf(w, "  - %s\n", safeText(r))
		}
	}
}

// printSource prints the source section of `imgfs info`, keys sorted.
func printSource(w io.Writer, m map[string]any) {
	if len(m) == 0 {
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(w, "source:")
	for _, k := range keys {
		fmt.Fprintf(w, "  %-20s %s\n", safeText(k)+":", safeText(m[k]))
	}
}

func sizeString(n int64) string {
	if n < 0 {
		return "unknown"
	}
	return fmt.Sprintf("%s (%d bytes)", humanize.IBytes(uint64(n)), n)
}

// statsLine describes the remote counters for --stats ("" for files).
func statsLine(img *imgfs.Image) string {
	st, ok := img.Stats()
	if !ok {
		return ""
	}
	line := st.String()
	if m := img.Mode(); m != "" {
		line += fmt.Sprintf(", %s mode", m)
	}
	if size := img.Stored.Size(); size > 0 {
		line += fmt.Sprintf(", fetched %.1f%% of the %d-byte image", 100*float64(st.BytesFetched)/float64(size), size)
	}
	if w := img.IntegrityWarning(); w != "" {
		line += ", " + w
	}
	return line
}

// sourceArg returns the single SOURCE argument.
func sourceArg(name string, args []string) error {
	if len(args) != 1 {
		return usageError("%s: want SOURCE", name)
	}
	return nil
}

// openImage opens SOURCE and says once, on stderr, why a Glance image
// stored in RBD is read over Glance's API instead of directly.
func openImage(ctx context.Context, spec string, opts imgfs.Options) (*imgfs.Image, error) {
	img, err := imgfs.Open(ctx, spec, opts)
	if err != nil {
		return nil, err
	}
	if n := img.DirectNote(); n != "" {
		fmt.Fprintf(os.Stderr, "imgfs: %s\n", safeText(n))
	}
	return img, nil
}
