package influxdb

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/noordoostpolder/shopfloor/collector"
)

// SkippedSample is a sample the encoder left out, and why.
type SkippedSample struct {
	// Index is the sample's position in the slice passed to AppendLines.
	Index  int
	Signal string
	Reason string
}

// EncodeError lists the samples that could not be encoded. It is returned
// together with valid lines holding every other sample: one bad value must
// not cost the rest of its batch, and the caller decides whether a partial
// result is acceptable.
type EncodeError struct {
	Skipped []SkippedSample
}

func (e *EncodeError) Error() string {
	const show = 5
	var b strings.Builder
	b.WriteString(strconv.Itoa(len(e.Skipped)))
	b.WriteString(" sample(s) cannot be written to InfluxDB and were left out: ")
	for i, s := range e.Skipped {
		if i == show {
			fmt.Fprintf(&b, "; and %d more", len(e.Skipped)-show)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "#%d %q: %s", s.Index, s.Signal, s.Reason)
	}
	return b.String()
}

// AppendLines appends the line protocol for samples to dst and returns the
// extended buffer and the number of lines (points) written.
//
// Consecutive samples with the same asset, machine type and timestamp
// become one line with a field per signal, so one MQTT message or OPC UA
// notification set is one point. A signal that repeats within such a run
// starts a new line, because InfluxDB keeps the last of duplicate fields
// anyway and some servers refuse them. The timestamp is SourceTime, or
// ReceiveTime when the source gave none: a line without one would get the
// server's clock and break the idempotency retries rely on.
//
// String values are escaped as lineprotocol.Encoder does, which writes a
// newline, CR or tab as \n, \r, \t; InfluxDB 1.x and 2.x do not unescape
// those, so such a string is stored with a visible backslash sequence
// (the integration test pins this). Line protocol has no way to carry a
// raw newline in a field value.
//
// A sample that is not good also gets a string field <signal>_quality;
// a sample without a value writes only that field, and a good sample
// without a value writes nothing.
//
// Samples that cannot be represented (empty or invalid signal names, NaN
// and infinities, invalid UTF-8, tag values with control characters, times
// outside 1677..2262) are left out; the lines returned are still valid and
// err is an *EncodeError listing them. err is also non-nil, with no lines,
// when measurement itself is invalid.
func AppendLines(dst []byte, measurement string, samples []collector.Sample) ([]byte, int, error) {
	var le lineEncoder
	return le.appendAll(dst, measurement, samples)
}

// lineEncoder keeps scratch space between calls, so a Sink encodes
// without allocating once its buffer has grown.
//
// It writes line protocol itself rather than through
// lineprotocol.Encoder: that encoder counts every escapable character of
// every name in a pass of its own, which made encoding a sixth of the
// agent's CPU under load. The output is byte for byte what
// lineprotocol.Encoder writes (FuzzLinesMatchLibrary compares the two).
type lineEncoder struct {
	skipped []SkippedSample
	// The series whose tag values were checked last: consecutive lines
	// are mostly of one machine, and checking costs a fifth of the time.
	checkedAsset  collector.Asset
	checkedType   string
	checkedWindow string
	checked       bool
	// kpiMeasurement receives derived samples (those with a Window);
	// empty means DefaultKPIMeasurement.
	kpiMeasurement string
}

func (le *lineEncoder) appendAll(dst []byte, measurement string, samples []collector.Sample) ([]byte, int, error) {
	if !validName(measurement) {
		return dst, 0, fmt.Errorf("invalid measurement name %q", measurement)
	}
	le.skipped = le.skipped[:0]
	out, lines, _ := le.encode(dst, measurement, samples, 0, 0)
	return out, lines, le.err()
}

// err returns the skipped samples of the last encode as an *EncodeError,
// copied so that the encoder can be reused.
func (le *lineEncoder) err() error {
	if len(le.skipped) == 0 {
		return nil
	}
	return &EncodeError{Skipped: append([]SkippedSample(nil), le.skipped...)}
}

// encode appends lines for samples until maxLines lines are written
// (0: no limit) and returns how many samples it consumed; it stops only
// between lines, so a point never spans two requests. offset is added to
// the indexes of skipped samples. measurement must be valid.
func (le *lineEncoder) encode(buf []byte, measurement string, samples []collector.Sample, maxLines, offset int) (out []byte, lines, consumed int) {
	le.checked = false
	i := 0
	for i < len(samples) {
		if maxLines > 0 && lines == maxLines {
			break
		}
		first := &samples[i]
		ts := timestamp(first)
		j := i + 1
		for j < len(samples) && sameLine(first, ts, &samples[j], samples[i:j]) {
			j++
		}
		if reason := le.checkLine(first, ts); reason != "" {
			for k := i; k < j; k++ {
				le.skip(offset+k, samples[k].Signal, reason)
			}
			i = j
			continue
		}
		sep := byte(0) // ' ' before the first field, ',' after
		for k := i; k < j; k++ {
			s := &samples[k]
			if reason := checkField(s); reason != "" {
				le.skip(offset+k, s.Signal, reason)
				continue
			}
			if s.Value.Kind() == collector.KindNone && s.Quality == collector.QualityGood {
				continue // nothing to say: no value and nothing wrong with it
			}
			if sep == 0 {
				buf = le.appendSeries(buf, measurement, first)
				sep = ' '
			}
			if s.Value.Kind() != collector.KindNone {
				buf = append(buf, sep)
				sep = ','
				buf = appendEscaped(buf, s.Signal, &keyEscapes)
				buf = append(buf, '=')
				buf = appendValue(buf, s.Value)
			}
			if s.Quality != collector.QualityGood {
				buf = append(buf, sep)
				sep = ','
				buf = appendEscaped(buf, s.Signal, &keyEscapes)
				buf = append(buf, "_quality=\""...)
				buf = append(buf, s.Quality.String()...)
				buf = append(buf, '"')
			}
		}
		if sep != 0 {
			buf = append(buf, ' ')
			buf = strconv.AppendInt(buf, ts.UnixNano(), 10)
			buf = append(buf, '\n')
			lines++
		}
		i = j
	}
	return buf, lines, i
}

func (le *lineEncoder) skip(index int, signal, reason string) {
	le.skipped = append(le.skipped, SkippedSample{Index: index, Signal: signal, Reason: reason})
}

// appendSeries writes the measurement and the tags, in the sorted order
// line protocol wants and leaving out empty ones.
func (le *lineEncoder) appendSeries(buf []byte, measurement string, s *collector.Sample) []byte {
	if s.Window != "" {
		measurement = le.kpiMeasurement
		if measurement == "" {
			measurement = DefaultKPIMeasurement
		}
	}
	buf = appendEscaped(buf, measurement, &measurementEscapes)
	buf = appendTag(buf, ",area=", s.Asset.Area)
	buf = appendTag(buf, ",line=", s.Asset.Line)
	buf = appendTag(buf, ",machine=", s.Asset.Machine)
	buf = appendTag(buf, ",machine_type=", s.MachineType)
	buf = appendTag(buf, ",site=", s.Asset.Site)
	return appendTag(buf, ",window=", s.Window)
}

func appendTag(buf []byte, keyEq, value string) []byte {
	if value == "" {
		return buf
	}
	return appendEscaped(append(buf, keyEq...), value, &keyEscapes)
}

// escapeTable maps a byte to the character written after a backslash for
// it, or 0 when it is written as it is.
type escapeTable [256]byte

func newEscapeTable(pairs ...[2]byte) escapeTable {
	var t escapeTable
	for _, p := range pairs {
		t[p[0]] = p[1]
	}
	return t
}

// The escapes of line protocol, as lineprotocol.Encoder applies them.
var (
	measurementEscapes = newEscapeTable([2]byte{' ', ' '}, [2]byte{',', ','})
	// keyEscapes serve tag keys, tag values and field keys.
	keyEscapes    = newEscapeTable([2]byte{' ', ' '}, [2]byte{',', ','}, [2]byte{'=', '='})
	stringEscapes = newEscapeTable([2]byte{'\\', '\\'}, [2]byte{'"', '"'}, [2]byte{'\n', 'n'}, [2]byte{'\r', 'r'}, [2]byte{'\t', 't'})
)

// appendEscaped appends s, escaped by t. Names rarely hold anything to
// escape, so one scan decides and the common case is a plain copy.
func appendEscaped(buf []byte, s string, t *escapeTable) []byte {
	i := 0
	for i < len(s) && t[s[i]] == 0 {
		i++
	}
	buf = append(buf, s[:i]...)
	for ; i < len(s); i++ {
		if r := t[s[i]]; r != 0 {
			buf = append(buf, '\\', r)
		} else {
			buf = append(buf, s[i])
		}
	}
	return buf
}

// appendValue writes a field value checked by checkField.
func appendValue(buf []byte, v collector.Value) []byte {
	switch v.Kind() {
	case collector.KindFloat:
		f, _ := v.AsFloat()
		return strconv.AppendFloat(buf, f, 'g', -1, 64)
	case collector.KindInt:
		i, _ := v.AsInt()
		return append(strconv.AppendInt(buf, i, 10), 'i')
	case collector.KindBool:
		if b, _ := v.AsBool(); b {
			return append(buf, "true"...)
		}
		return append(buf, "false"...)
	case collector.KindString:
		buf = append(buf, '"')
		buf = appendEscaped(buf, v.Str(), &stringEscapes)
		return append(buf, '"')
	}
	return buf
}

func timestamp(s *collector.Sample) time.Time {
	if s.SourceTime.IsZero() {
		return s.ReceiveTime
	}
	return s.SourceTime
}

// sameLine reports whether b belongs on the line that a starts: same
// series, same time, and a signal the line does not have yet.
func sameLine(a *collector.Sample, ts time.Time, b *collector.Sample, line []collector.Sample) bool {
	if a.Asset != b.Asset || a.MachineType != b.MachineType || a.Window != b.Window || !timestamp(b).Equal(ts) {
		return false
	}
	for k := range line {
		if line[k].Signal == b.Signal {
			return false
		}
	}
	return true
}

// checkLine finds what would make the whole line invalid: its time and
// its tag values.
func (le *lineEncoder) checkLine(s *collector.Sample, ts time.Time) string {
	switch {
	case ts.IsZero():
		return "no source or receive time"
	case ts.Before(time.Unix(0, math.MinInt64)) || ts.After(time.Unix(0, math.MaxInt64)):
		return "time " + ts.Format(time.RFC3339) + " is outside what InfluxDB can store (1677..2262)"
	}
	if le.checked && s.Asset == le.checkedAsset && s.MachineType == le.checkedType && s.Window == le.checkedWindow {
		return ""
	}
	for _, t := range [...]struct{ key, val string }{
		{"area", s.Asset.Area}, {"line", s.Asset.Line}, {"machine", s.Asset.Machine},
		{"machine_type", s.MachineType}, {"site", s.Asset.Site}, {"window", s.Window},
	} {
		if t.val != "" && !validName(t.val) {
			return fmt.Sprintf("tag %s=%q has control characters, invalid UTF-8 or a trailing backslash", t.key, t.val)
		}
	}
	le.checkedAsset, le.checkedType, le.checkedWindow, le.checked = s.Asset, s.MachineType, s.Window, true
	return ""
}

// checkField says why a sample's field cannot be written, or "".
func checkField(s *collector.Sample) string {
	switch {
	case s.Signal == "":
		return "empty signal name"
	case s.Signal == "time":
		return `"time" is reserved by InfluxDB and cannot be a field name`
	case !validName(s.Signal):
		return "signal name has control characters, invalid UTF-8 or a trailing backslash"
	}
	switch s.Value.Kind() {
	case collector.KindFloat:
		f, _ := s.Value.AsFloat()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return "float value " + strconv.FormatFloat(f, 'g', -1, 64) + " has no line protocol form"
		}
	case collector.KindString:
		if !utf8.ValidString(s.Value.Str()) {
			return "string value is not valid UTF-8"
		}
	case collector.KindInt, collector.KindBool, collector.KindNone:
	default:
		return "unknown value kind " + s.Value.Kind().String()
	}
	return ""
}

// validName mirrors what lineprotocol.Encoder accepts for a measurement,
// key or tag value, so bad samples are skipped one by one instead of
// making the encoder drop a whole line.
func validName(s string) bool {
	if s == "" || s[len(s)-1] == '\\' {
		return false
	}
	ascii := true
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c == 0x7f:
			return false
		case c >= 0x80:
			ascii = false
		}
	}
	return ascii || utf8.ValidString(s)
}
