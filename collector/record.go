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

func sampleStrings(s *Sample) [nStrings]*string {
	return [nStrings]*string{&s.Asset.Site, &s.Asset.Area, &s.Asset.Line, &s.Asset.Machine, &s.MachineType, &s.Signal, &s.Unit, &s.Window}
}

// AppendRecord encodes samples onto dst.
func AppendRecord(dst []byte, samples []Sample) []byte {
	dst = append(dst, recordVersion)
	dst = binary.AppendUvarint(dst, uint64(len(samples)))
	var prev *Sample
	for i := range samples {
		s := &samples[i]
		cur := sampleStrings(s)
		var flags byte
		if prev != nil {
			p := sampleStrings(prev)
			for j := range cur {
				if *cur[j] == *p[j] {
					flags |= 1 << j
				}
			}
		}
		dst = append(dst, flags)
		for j, str := range cur {
			if flags&(1<<j) == 0 {
				dst = binary.AppendUvarint(dst, uint64(len(*str)))
				dst = append(dst, *str...)
			}
		}
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
	var prev Sample
	for i := uint64(0); i < n; i++ {
		var s Sample
		if len(b) < 1 {
			return dst, errShortRecord
		}
		flags := b[0]
		b = b[1:]
		cur, p := sampleStrings(&s), sampleStrings(&prev)
		for j := range cur {
			if flags&(1<<j) != 0 {
				if i == 0 {
					return dst, fmt.Errorf("record: first sample refers to a previous one")
				}
				*cur[j] = *p[j]
				continue
			}
			l, k := binary.Uvarint(b)
			if k <= 0 || l > uint64(len(b)-k) {
				return dst, errShortRecord
			}
			*cur[j] = d.intern(b[k : k+int(l)])
			b = b[k+int(l):]
		}
		if len(b) < 1 {
			return dst, errShortRecord
		}
		s.Value.kind = Kind(b[0])
		b = b[1:]
		switch s.Value.kind {
		case KindNone:
		case KindFloat:
			if len(b) < 8 {
				return dst, errShortRecord
			}
			s.Value.num = math.Float64frombits(binary.LittleEndian.Uint64(b))
			b = b[8:]
		case KindInt:
			v, k := binary.Varint(b)
			if k <= 0 {
				return dst, errShortRecord
			}
			s.Value.i, b = v, b[k:]
		case KindBool:
			if len(b) < 1 || b[0] > 1 {
				return dst, errShortRecord
			}
			s.Value.i, b = int64(b[0]), b[1:]
		case KindString:
			l, k := binary.Uvarint(b)
			if k <= 0 || l > uint64(len(b)-k) {
				return dst, errShortRecord
			}
			s.Value.str = d.intern(b[k : k+int(l)])
			b = b[k+int(l):]
		default:
			return dst, fmt.Errorf("record: unknown value kind %d", s.Value.kind)
		}
		if len(b) < 1 || b[0] > byte(QualityBad) {
			return dst, errShortRecord
		}
		s.Quality = Quality(b[0])
		b = b[1:]
		st, k := binary.Varint(b)
		if k <= 0 {
			return dst, errShortRecord
		}
		b = b[k:]
		rt, k := binary.Varint(b)
		if k <= 0 {
			return dst, errShortRecord
		}
		b = b[k:]
		s.SourceTime, s.ReceiveTime = fromUnixNano(st), fromUnixNano(rt)
		dst = append(dst, s)
		prev = s
	}
	if len(b) != 0 {
		return dst, fmt.Errorf("record: %d bytes after the last sample", len(b))
	}
	return dst, nil
}
