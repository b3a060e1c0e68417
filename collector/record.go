package collector

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// The queue stores samples as records in this format, version 1:
//
//	version byte, sample count uvarint, then per sample:
//	flags byte: bit i set = string i is the same as in the previous sample
//	the strings not repeated: uvarint length + bytes, in the order
//	  site, area, line, machine, machine type, signal, unit, window
//	kind byte, value (float: 8 bytes IEEE 754; int: zigzag varint;
//	  bool: 1 byte; string: uvarint length + bytes; none: nothing)
//	quality byte, source time varint ns, receive time varint ns
//
// Samples of one record nearly always share their asset, so the flags make
// a record little bigger than its values.
const recordVersion = 1

const nStrings = 8

// AppendRecord encodes samples onto dst.
func AppendRecord(dst []byte, samples []Sample) []byte {
	dst = append(dst, recordVersion)
	dst = binary.AppendUvarint(dst, uint64(len(samples)))
	var prev *Sample
	for i := range samples {
		s := &samples[i]
		// The strings are named one by one: building arrays of pointers
		// to them per sample was a third of this function's time.
		var flags byte
		if prev != nil {
			flags = sameBit(s.Asset.Site, prev.Asset.Site, 0) | sameBit(s.Asset.Area, prev.Asset.Area, 1) |
				sameBit(s.Asset.Line, prev.Asset.Line, 2) | sameBit(s.Asset.Machine, prev.Asset.Machine, 3) |
				sameBit(s.MachineType, prev.MachineType, 4) | sameBit(s.Signal, prev.Signal, 5) |
				sameBit(s.Unit, prev.Unit, 6) | sameBit(s.Window, prev.Window, 7)
		}
		dst = append(dst, flags)
		dst = appendNew(dst, flags, 0, s.Asset.Site)
		dst = appendNew(dst, flags, 1, s.Asset.Area)
		dst = appendNew(dst, flags, 2, s.Asset.Line)
		dst = appendNew(dst, flags, 3, s.Asset.Machine)
		dst = appendNew(dst, flags, 4, s.MachineType)
		dst = appendNew(dst, flags, 5, s.Signal)
		dst = appendNew(dst, flags, 6, s.Unit)
		dst = appendNew(dst, flags, 7, s.Window)
		dst = append(dst, byte(s.Value.kind))
		switch s.Value.kind {
		case KindFloat:
			dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(s.Value.num))
		case KindInt:
			dst = binary.AppendVarint(dst, s.Value.i)
		case KindBool:
			dst = append(dst, byte(s.Value.i))
		case KindString:
			dst = binary.AppendUvarint(dst, uint64(len(s.Value.str)))
			dst = append(dst, s.Value.str...)
		}
		dst = append(dst, byte(s.Quality))
		dst = binary.AppendVarint(dst, unixNano(s.SourceTime))
		dst = binary.AppendVarint(dst, unixNano(s.ReceiveTime))
		prev = s
	}
	return dst
}

// sameBit is bit i when a equals b.
func sameBit(a, b string, i uint) byte {
	if a == b {
		return 1 << i
	}
	return 0
}

// appendNew appends str, length first, unless flags mark it repeated.
func appendNew(dst []byte, flags byte, i uint, str string) []byte {
	if flags&(1<<i) != 0 {
		return dst
	}
	dst = binary.AppendUvarint(dst, uint64(len(str)))
	return append(dst, str...)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return math.MinInt64
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == math.MinInt64 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

var errShortRecord = errors.New("record ends early")

// RecordDecoder decodes records. It interns strings, so a steady stream of
// the same machines and signals decodes without allocating them again. It
// is not safe for concurrent use.
type RecordDecoder struct {
	strs map[string]string
}

// maxInterned bounds the intern table; a source with ever new names (a
// program name per part, say) must not grow it without end.
const maxInterned = 1 << 16

func (d *RecordDecoder) intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if s, ok := d.strs[string(b)]; ok {
		return s
	}
	if d.strs == nil || len(d.strs) >= maxInterned {
		d.strs = make(map[string]string, 256)
	}
	s := string(b)
	d.strs[s] = s
	return s
}

// Decode appends the samples of rec to dst.
func (d *RecordDecoder) Decode(rec []byte, dst []Sample) ([]Sample, error) {
	if len(rec) == 0 || rec[0] != recordVersion {
		return dst, fmt.Errorf("record: unknown version")
	}
	b := rec[1:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return dst, fmt.Errorf("record: bad sample count")
	}
	b = b[k:]
	// Each sample is decoded in its place in dst: a Sample is some 200
	// bytes, and copying it twice per sample showed in the agent's
	// profile.
	start := len(dst)
	fail := func(err error) ([]Sample, error) { return dst[:start], err }
	var strs [nStrings]string // the strings of the sample before, in record order
	for i := uint64(0); i < n; i++ {
		if len(b) < 1 {
			return fail(errShortRecord)
		}
		dst = append(dst, Sample{})
		s := &dst[len(dst)-1]
		flags := b[0]
		b = b[1:]
		if i == 0 && flags != 0 {
			return fail(fmt.Errorf("record: first sample refers to a previous one"))
		}
		for j := range strs {
			if flags&(1<<j) != 0 {
				continue // as in the sample before
			}
			l, k := binary.Uvarint(b)
			if k <= 0 || l > uint64(len(b)-k) {
				return fail(errShortRecord)
			}
			strs[j] = d.intern(b[k : k+int(l)])
			b = b[k+int(l):]
		}
		s.Asset = Asset{Site: strs[0], Area: strs[1], Line: strs[2], Machine: strs[3]}
		s.MachineType, s.Signal, s.Unit, s.Window = strs[4], strs[5], strs[6], strs[7]
		if len(b) < 1 {
			return fail(errShortRecord)
		}
		s.Value.kind = Kind(b[0])
		b = b[1:]
		switch s.Value.kind {
		case KindNone:
		case KindFloat:
			if len(b) < 8 {
				return fail(errShortRecord)
			}
			s.Value.num = math.Float64frombits(binary.LittleEndian.Uint64(b))
			b = b[8:]
		case KindInt:
			v, k := binary.Varint(b)
			if k <= 0 {
				return fail(errShortRecord)
			}
			s.Value.i, b = v, b[k:]
		case KindBool:
			if len(b) < 1 || b[0] > 1 {
				return fail(errShortRecord)
			}
			s.Value.i, b = int64(b[0]), b[1:]
		case KindString:
			l, k := binary.Uvarint(b)
			if k <= 0 || l > uint64(len(b)-k) {
				return fail(errShortRecord)
			}
			s.Value.str = d.intern(b[k : k+int(l)])
			b = b[k+int(l):]
		default:
			return fail(fmt.Errorf("record: unknown value kind %d", s.Value.kind))
		}
		if len(b) < 1 || b[0] > byte(QualityBad) {
			return fail(errShortRecord)
		}
		s.Quality = Quality(b[0])
		b = b[1:]
		st, k := binary.Varint(b)
		if k <= 0 {
			return fail(errShortRecord)
		}
		b = b[k:]
		rt, k := binary.Varint(b)
		if k <= 0 {
			return fail(errShortRecord)
		}
		b = b[k:]
		s.SourceTime, s.ReceiveTime = fromUnixNano(st), fromUnixNano(rt)
	}
	if len(b) != 0 {
		return dst[:start], fmt.Errorf("record: %d bytes after the last sample", len(b))
	}
	return dst, nil
}
