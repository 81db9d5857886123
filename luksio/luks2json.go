package luksio

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/imgfs/imgfs/blockdev"
)

// Limits on LUKS2 JSON metadata, named after the cryptsetup constants.
const (
	luks2MaxJSONDepth = 16  // the format nests 4 levels deep
	luks2KeyslotsMax  = 32  // LUKS2_KEYSLOTS_MAX
	luks2DigestsMax   = 32  // digests in one header
	luks2MaxSaltLen   = 256 // bytes, decoded (cryptsetup uses 32)
	luks2MaxDigestLen = 64  // bytes, decoded: the largest hash output
	luks2MaxStripes   = luks1MaxStripes
	luks2MaxCPUs      = 255 // argon2 lanes that x/crypto/argon2 accepts
)

// luks2JSON mirrors the LUKS2 JSON metadata object.
type luks2JSON struct {
	Keyslots map[string]luks2Keyslot `json:"keyslots"`
	Tokens   map[string]json.RawMessage
	Segments map[string]luks2Segment `json:"segments"`
	Digests  map[string]luks2Digest  `json:"digests"`
	Config   struct {
		JSONSize     jsonU64  `json:"json_size"`
		KeyslotsSize jsonU64  `json:"keyslots_size"`
		Flags        []string `json:"flags"`
		Requirements struct {
			Mandatory []string `json:"mandatory"`
		} `json:"requirements"`
	} `json:"config"`
}

type luks2Keyslot struct {
	Type     string `json:"type"`
	KeySize  int    `json:"key_size"`
	Priority *int   `json:"priority"`
	AF       struct {
		Type    string `json:"type"`
		Stripes int    `json:"stripes"`
		Hash    string `json:"hash"`
	} `json:"af"`
	Area struct {
		Type       string  `json:"type"`
		Offset     jsonU64 `json:"offset"`
		Size       jsonU64 `json:"size"`
		Encryption string  `json:"encryption"`
		KeySize    int     `json:"key_size"`
	} `json:"area"`
	KDF struct {
		Type       string `json:"type"`
		Hash       string `json:"hash"`
		Iterations uint32 `json:"iterations"`
		Time       uint32 `json:"time"`
		Memory     uint32 `json:"memory"`
		CPUs       uint32 `json:"cpus"`
		Salt       string `json:"salt"`
	} `json:"kdf"`
}

type luks2Segment struct {
	Type       string          `json:"type"`
	Offset     jsonU64         `json:"offset"`
	Size       string          `json:"size"`
	IVTweak    jsonU64         `json:"iv_tweak"`
	Encryption string          `json:"encryption"`
	SectorSize int             `json:"sector_size"`
	Integrity  json.RawMessage `json:"integrity"`
	Flags      []string        `json:"flags"`
}

type luks2Digest struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
	Hash       string   `json:"hash"`
	Iterations uint32   `json:"iterations"`
	Salt       string   `json:"salt"`
	Digest     string   `json:"digest"`
}

// jsonU64 is a LUKS2 64-bit number, which the format stores as a decimal string.
type jsonU64 uint64

// UnmarshalJSON accepts a JSON string holding a decimal uint64.
func (n *jsonU64) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a decimal string, got %.20s", b)
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("bad number %q", s)
	}
	*n = jsonU64(v)
	return nil
}

// parseLUKS2JSON decodes the NUL-padded JSON area after checking its nesting.
func parseLUKS2JSON(area []byte) (*luks2JSON, error) {
	if i := bytes.IndexByte(area, 0); i >= 0 {
		area = area[:i]
	}
	if d := jsonDepth(area); d > luks2MaxJSONDepth {
		return nil, corruptf("JSON metadata nests %d levels (limit %d)", d, luks2MaxJSONDepth)
	}
	var j luks2JSON
	if err := json.Unmarshal(area, &j); err != nil {
		return nil, corruptf("JSON metadata: %v", err)
	}
	if j.Keyslots == nil || j.Segments == nil || j.Digests == nil {
		return nil, corruptf("JSON metadata lacks keyslots, segments or digests")
	}
	return &j, nil
}

// jsonDepth returns the deepest nesting of objects and arrays in b.
func jsonDepth(b []byte) int {
	depth, maxDepth, inString, escaped := 0, 0, false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			maxDepth = max(maxDepth, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return maxDepth
}

// header validates the metadata and builds a Header for an image of size
// bytes whose header copies are hdrSize bytes each.
func (j *luks2JSON) header(size, hdrSize int64) (*Header, error) {
	if req := j.Config.Requirements.Mandatory; len(req) > 0 {
		return nil, unsupportedf("luks2: mandatory requirements %q (e.g. an unfinished reencryption)", req)
	}
	if len(j.Segments) != 1 {
		return nil, unsupportedf("luks2: %d segments (only one is supported; reencryption in progress?)", len(j.Segments))
	}
	var segID string
	var seg luks2Segment
	for id, s := range j.Segments {
		segID, seg = id, s
	}
	if seg.Type != "crypt" {
		return nil, unsupportedf("luks2: segment %s: type %q", segID, seg.Type)
	}
	if len(seg.Integrity) > 0 && string(seg.Integrity) != "null" {
		return nil, unsupportedf("luks2: segment %s: integrity protection", segID)
	}
	if len(seg.Flags) > 0 {
		return nil, unsupportedf("luks2: segment %s: flags %q", segID, seg.Flags)
	}
	if !validSectorSize(seg.SectorSize) {
		return nil, corruptf("luks2: segment %s: sector_size %d", segID, seg.SectorSize)
	}
	if _, err := parseCipherSpec(seg.Encryption); err != nil {
		return nil, fmt.Errorf("luks2: segment %s: %w", segID, err)
	}
	h := &Header{
		CipherSpec: seg.Encryption,
		SectorSize: seg.SectorSize,
		IVTweak:    uint64(seg.IVTweak),
	}
	if seg.Offset > math.MaxInt64/2 || int64(seg.Offset) < 2*hdrSize || int64(seg.Offset)%luks1SectorSize != 0 {
		return nil, corruptf("luks2: segment %s: offset %d (headers take %d bytes; detached headers are not supported)", segID, seg.Offset, 2*hdrSize)
	}
	h.PayloadOffset = int64(seg.Offset)
	if seg.Size == "dynamic" {
		h.DynamicSize = true
		h.PayloadSize = dynamicSize(size, h.PayloadOffset, h.SectorSize)
	} else {
		n, err := strconv.ParseUint(seg.Size, 10, 64)
		if err != nil || n > math.MaxInt64/2 || n%uint64(seg.SectorSize) != 0 {
			return nil, corruptf("luks2: segment %s: size %q", segID, seg.Size)
		}
		h.PayloadSize = int64(n)
	}

	if len(j.Digests) > luks2DigestsMax {
		return nil, corruptf("luks2: %d digests (limit %d)", len(j.Digests), luks2DigestsMax)
	}
	if len(j.Keyslots) > luks2KeyslotsMax {
		return nil, corruptf("luks2: %d keyslots (limit %d)", len(j.Keyslots), luks2KeyslotsMax)
	}
	slotIDs := map[int]bool{}
	for id := range j.Keyslots {
		n, err := strconv.Atoi(id)
		if err != nil || n < 0 || n >= luks2KeyslotsMax || strconv.Itoa(n) != id {
			return nil, corruptf("luks2: keyslot id %q", id)
		}
		slotIDs[n] = true
	}
	for id, d := range j.Digests {
		dg, ok, err := d.parse(segID, slotIDs)
		if err != nil {
			return nil, fmt.Errorf("luks2: digest %s: %w", id, err)
		}
		if ok {
			h.digests = append(h.digests, dg)
			h.HashSpec = dg.hash
		}
	}
	if len(h.digests) == 0 {
		return nil, corruptf("luks2: no digest covers segment %s", segID)
	}
	for id := 0; id < luks2KeyslotsMax; id++ {
		if !slotIDs[id] {
			continue
		}
		ks, err := j.Keyslots[strconv.Itoa(id)].parse(id, size, hdrSize, h.PayloadOffset)
		if err != nil {
			return nil, fmt.Errorf("luks2: keyslot %d: %w", id, err)
		}
		if !slices.ContainsFunc(h.digests, func(d digest) bool { return slices.Contains(d.keyslots, id) }) {
			continue // belongs to no digest of the segment: cannot unlock it
		}
		if h.KeyBytes == 0 {
			h.KeyBytes = ks.KeyBytes
		}
		h.Keyslots = append(h.Keyslots, ks)
	}
	return h, nil
}

// parse validates a digest; ok is false when it does not cover segment segID.
func (d luks2Digest) parse(segID string, slots map[int]bool) (digest, bool, error) {
	if d.Type != "pbkdf2" {
		return digest{}, false, unsupportedf("type %q", d.Type)
	}
	if _, err := hashByName(d.Hash); err != nil {
		return digest{}, false, err
	}
	if d.Iterations == 0 {
		return digest{}, false, corruptf("iterations is 0")
	}
	salt, err := decodeB64(d.Salt, luks2MaxSaltLen)
	if err != nil {
		return digest{}, false, fmt.Errorf("salt: %w", err)
	}
	value, err := decodeB64(d.Digest, luks2MaxDigestLen)
	if err != nil || len(value) == 0 {
		return digest{}, false, corruptf("digest value: %v", err)
	}
	dg := digest{hash: d.Hash, iterations: d.Iterations, salt: salt, value: value}
	for _, s := range d.Keyslots {
		n, err := strconv.Atoi(s)
		if err != nil || !slots[n] {
			return digest{}, false, corruptf("names keyslot %q that does not exist", s)
		}
		dg.keyslots = append(dg.keyslots, n)
	}
	return dg, slices.Contains(d.Segments, segID), nil
}

// parse validates a keyslot against the image and header layout.
func (k luks2Keyslot) parse(id int, size, hdrSize, payloadOffset int64) (Keyslot, error) {
	if k.Type != "luks2" {
		return Keyslot{}, unsupportedf("type %q", k.Type)
	}
	if !validKeyBytes(k.KeySize) {
		return Keyslot{}, corruptf("key_size %d", k.KeySize)
	}
	ks := Keyslot{Index: id, KeyBytes: k.KeySize, Priority: 1, afHash: k.AF.Hash, areaKeyBytes: k.Area.KeySize, AreaCipher: k.Area.Encryption}
	if k.Priority != nil {
		if *k.Priority < 0 || *k.Priority > 2 {
			return Keyslot{}, corruptf("priority %d", *k.Priority)
		}
		ks.Priority = *k.Priority
	}
	if k.AF.Type != "luks1" {
		return Keyslot{}, unsupportedf("anti-forensic splitter %q", k.AF.Type)
	}
	if _, err := hashByName(k.AF.Hash); err != nil {
		return Keyslot{}, fmt.Errorf("af hash: %w", err)
	}
	if k.AF.Stripes < 1 || k.AF.Stripes > luks2MaxStripes {
		return Keyslot{}, corruptf("%d stripes (limit %d)", k.AF.Stripes, luks2MaxStripes)
	}
	ks.Stripes = uint32(k.AF.Stripes)
	if k.Area.Type != "raw" {
		return Keyslot{}, unsupportedf("area type %q", k.Area.Type)
	}
	if _, err := parseCipherSpec(k.Area.Encryption); err != nil {
		return Keyslot{}, fmt.Errorf("area: %w", err)
	}
	if !validKeyBytes(k.Area.KeySize) {
		return Keyslot{}, corruptf("area key_size %d", k.Area.KeySize)
	}
	if k.Area.Offset > math.MaxInt64/2 || k.Area.Size > math.MaxInt64/2 {
		return Keyslot{}, corruptf("area %d+%d", k.Area.Offset, k.Area.Size)
	}
	ks.AreaOffset, ks.AreaSize = int64(k.Area.Offset), int64(k.Area.Size)
	need := roundUp(int64(k.KeySize)*int64(k.AF.Stripes), luks1SectorSize)
	switch {
	case ks.AreaSize < need:
		return Keyslot{}, corruptf("area of %d bytes cannot hold %d bytes of key material", ks.AreaSize, need)
	case ks.AreaOffset < 2*hdrSize || ks.AreaOffset%luks1SectorSize != 0:
		return Keyslot{}, corruptf("area offset %d overlaps the headers", ks.AreaOffset)
	case ks.AreaOffset+ks.AreaSize > payloadOffset:
		return Keyslot{}, corruptf("area %d+%d overlaps the payload at %d", ks.AreaOffset, ks.AreaSize, payloadOffset)
	case ks.AreaOffset+need > size:
		return Keyslot{}, fmt.Errorf("area %d+%d ends past the image (%d bytes): %w", ks.AreaOffset, need, size, blockdev.ErrTruncated)
	}
	var err error
	switch ks.KDF = k.KDF.Type; ks.KDF {
	case "pbkdf2":
		if _, err := hashByName(k.KDF.Hash); err != nil {
			return Keyslot{}, fmt.Errorf("kdf: %w", err)
		}
		if k.KDF.Iterations == 0 {
			return Keyslot{}, corruptf("kdf iterations is 0")
		}
		ks.Hash, ks.Iterations = k.KDF.Hash, k.KDF.Iterations
	case "argon2i", "argon2id":
		if k.KDF.Time == 0 || k.KDF.Memory == 0 || k.KDF.CPUs == 0 || k.KDF.CPUs > luks2MaxCPUs {
			return Keyslot{}, corruptf("kdf %s time %d memory %d cpus %d", ks.KDF, k.KDF.Time, k.KDF.Memory, k.KDF.CPUs)
		}
		ks.Iterations, ks.MemoryKiB, ks.Parallel = k.KDF.Time, k.KDF.Memory, k.KDF.CPUs
	default:
		return Keyslot{}, unsupportedf("kdf %q", k.KDF.Type)
	}
	if ks.salt, err = decodeB64(k.KDF.Salt, luks2MaxSaltLen); err != nil {
		return Keyslot{}, fmt.Errorf("kdf salt: %w", err)
	}
	return ks, nil
}

// decodeB64 decodes standard base64 of at most limit decoded bytes.
func decodeB64(s string, limit int) ([]byte, error) {
	if base64.StdEncoding.DecodedLen(len(s)) > limit+3 {
		return nil, corruptf("base64 value of %d characters (limit %d bytes)", len(s), limit)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, corruptf("base64: %v", err)
	}
	if len(b) > limit {
		return nil, corruptf("%d bytes (limit %d)", len(b), limit)
	}
	return b, nil
}
