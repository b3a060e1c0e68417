package mqtt

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fastjson"

	"github.com/noordoostpolder/shopfloor/collector"
)

// Bad input reasons, used as the reason label of Output.Bad.
const (
	ReasonInvalidJSON     = "invalid_json"
	ReasonBadTimestamp    = "bad_timestamp"
	ReasonUnknownField    = "unknown_field"
	ReasonNonFinite       = "non_finite"
	ReasonNotAnObject     = "not_an_object"
	ReasonBadFieldName    = "bad_field_name"
	ReasonOversized       = "oversized"
	ReasonUnexpectedTopic = "unexpected_topic"
)

// BadInputError is a payload, or one value of it, that cannot be used.
// Reason is one of the Reason constants.
type BadInputError struct {
	Reason string
	Err    error
}

func (e *BadInputError) Error() string { return e.Reason + ": " + e.Err.Error() }

func (e *BadInputError) Unwrap() error { return e.Err }

func badInput(reason, format string, args ...any) *BadInputError {
	return &BadInputError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// ValueErrors lists the values of a message that were left out while the
// rest of it was kept. It is a distinct type from *BadInputError, and does
// not unwrap to its elements, so that errors.As tells a partly used
// message from a refused one.
type ValueErrors []*BadInputError

func (e ValueErrors) Error() string {
	parts := make([]string, len(e))
	for i, b := range e {
		parts[i] = b.Error()
	}
	return strings.Join(parts, "; ")
}

// maxInterned bounds the strings a Decoder remembers, so a publisher that
// invents a new field name per message cannot grow it without end.
const maxInterned = 4096

// maxInternedLen keeps long free text (alarm messages) out of the intern
// table; it would rarely repeat.
const maxInternedLen = 64

// Decoder turns JSON payloads into samples. It keeps a parser and the
// signal names it has seen between calls, so that a steady stream of
// messages decodes with almost no allocation. A Decoder is not safe for
// concurrent use: give each worker its own. The zero value is ready.
type Decoder struct {
	parser fastjson.Parser
	path   []byte
	names  map[string]string

	// Per call.
	f    JSONFormat
	skip string // a subtree of the root left out (the readings array)
	bad  ValueErrors
	err  *BadInputError
}

// DecodeJSON decodes one payload with a fresh Decoder. It is the pure form
// of Decoder.Decode, for callers that decode rarely.
func DecodeJSON(payload []byte, f JSONFormat, received time.Time, dst []collector.Sample) ([]collector.Sample, error) {
	var d Decoder
	return d.Decode(payload, f, received, dst)
}

// Decode appends the samples of payload to dst and returns it.
//
// Every scalar of a reading becomes a sample named by its dotted path
// (axis.x.load; array elements add their index, temp.0); numbers are
// floats, null is skipped, and the time field is not emitted. When f.Readings
// is set, the scalars beside the readings array are emitted once too, so a
// machine id carried there can feed the collector's asset rule.
//
// A message that cannot be used as a whole returns nil and a
// *BadInputError. Values that cannot be used alone (a non-finite number, an
// empty field name) are left out: Decode then returns the other samples and
// a ValueErrors naming each, so the caller can count them and still emit
// the rest.
//
// String values and signal names are copied out of the payload, so the
// samples stay valid after payload is reused.
func (d *Decoder) Decode(payload []byte, f JSONFormat, received time.Time, dst []collector.Sample) ([]collector.Sample, error) {
	v, err := d.parser.ParseBytes(payload)
	if err != nil {
		return nil, &BadInputError{Reason: ReasonInvalidJSON, Err: err}
	}
	d.f, d.skip, d.bad, d.err = f, "", nil, nil
	d.path = d.path[:0]
	switch {
	case f.Readings != "":
		if v.Type() != fastjson.TypeObject {
			return nil, badInput(ReasonNotAnObject, "payload is %s, want an object with readings at %q", typeName(v), f.Readings)
		}
		rootTime, bad := d.timeOf(v, received)
		if bad != nil {
			return nil, bad
		}
		arr := lookup(v, f.Readings)
		if arr == nil || arr.Type() != fastjson.TypeArray {
			return nil, badInput(ReasonNotAnObject, "readings %q is %s, want an array of objects", f.Readings, typeName(arr))
		}
		d.skip = f.Readings
		dst = d.walk(v, rootTime, received, dst)
		d.skip = ""
		if dst, bad = d.readings(arr.GetArray(), rootTime, received, dst); bad != nil {
			return nil, bad
		}
	case v.Type() == fastjson.TypeArray:
		var bad *BadInputError
		if dst, bad = d.readings(v.GetArray(), received, received, dst); bad != nil {
			return nil, bad
		}
	case v.Type() == fastjson.TypeObject:
		t, bad := d.timeOf(v, received)
		if bad != nil {
			return nil, bad
		}
		dst = d.walk(v, t, received, dst)
	default:
		return nil, badInput(ReasonNotAnObject, "payload is %s, want an object or an array of objects", typeName(v))
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.bad) > 0 {
		return dst, d.bad
	}
	return dst, nil
}

func (d *Decoder) readings(arr []*fastjson.Value, def, received time.Time, dst []collector.Sample) ([]collector.Sample, *BadInputError) {
	for i, r := range arr {
		if r.Type() != fastjson.TypeObject {
			return nil, badInput(ReasonNotAnObject, "reading %d is %s, want an object", i, typeName(r))
		}
		t, err := d.timeOf(r, def)
		if err != nil {
			return nil, err
		}
		d.path = d.path[:0]
		dst = d.walk(r, t, received, dst)
		if d.err != nil {
			return nil, d.err
		}
	}
	return dst, nil
}

// walk flattens v, whose path is d.path, into dst.
func (d *Decoder) walk(v *fastjson.Value, t, received time.Time, dst []collector.Sample) []collector.Sample {
	if d.err != nil {
		return dst
	}
	switch v.Type() {
	case fastjson.TypeObject:
		mark := len(d.path)
		v.GetObject().Visit(func(k []byte, c *fastjson.Value) {
			if mark > 0 {
				d.path = append(d.path, '.')
			}
			d.path = append(d.path, k...)
			if len(k) == 0 || bytes.IndexByte(k, '.') >= 0 {
				// A dotted or empty key would make a signal name that
				// no path in the config can address.
				d.bad = append(d.bad, badInput(ReasonBadFieldName, "field %q: a field name must be non-empty and contain no dot", d.path))
			} else if !d.skipped() {
				dst = d.walk(c, t, received, dst)
			}
			d.path = d.path[:mark]
		})
		return dst
	case fastjson.TypeArray:
		mark := len(d.path)
		for i, c := range v.GetArray() {
			d.path = strconv.AppendInt(append(d.path, '.'), int64(i), 10)
			if !d.skipped() {
				dst = d.walk(c, t, received, dst)
			}
			d.path = d.path[:mark]
		}
		return dst
	case fastjson.TypeNull:
		return dst
	}
	if !d.allowed() {
		return dst
	}
	var val collector.Value
	switch v.Type() {
	case fastjson.TypeNumber:
		x, err := v.Float64()
		if err != nil {
			d.err = badInput(ReasonInvalidJSON, "field %s: %v", d.path, err)
			return dst
		}
		if math.IsNaN(x) || math.IsInf(x, 0) {
			d.bad = append(d.bad, badInput(ReasonNonFinite, "field %s: %v is not a finite number", d.path, x))
			return dst
		}
		val = collector.Float(x)
	case fastjson.TypeString:
		val = collector.String(d.intern(v.GetStringBytes()))
	case fastjson.TypeTrue:
		val = collector.Bool(true)
	case fastjson.TypeFalse:
		val = collector.Bool(false)
	}
	return append(dst, collector.Sample{
		Signal:      d.intern(d.path),
		Value:       val,
		SourceTime:  t,
		ReceiveTime: received,
	})
}

// skipped reports whether the subtree at d.path is not data: the time
// field, or the readings array while the root is walked.
func (d *Decoder) skipped() bool {
	return string(d.path) == d.f.TimeField || (d.skip != "" && string(d.path) == d.skip)
}

// allowed applies the field allow-list to the scalar at d.path.
func (d *Decoder) allowed() bool {
	if len(d.f.Fields) == 0 || d.f.UnknownFields == "" || d.f.UnknownFields == UnknownPass {
		return true
	}
	for _, f := range d.f.Fields {
		if hasPathPrefix(d.path, f) {
			return true
		}
	}
	if d.f.UnknownFields == UnknownReject && d.err == nil {
		d.err = badInput(ReasonUnknownField, "field %s is not in the fields list", d.path)
	}
	return false
}

// hasPathPrefix reports whether path is prefix or lies below it.
func hasPathPrefix(path []byte, prefix string) bool {
	if len(path) < len(prefix) || string(path[:len(prefix)]) != prefix {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '.'
}

// intern returns b as a string, reusing an earlier copy when there is one:
// field names and enum values such as "running" repeat in every message.
func (d *Decoder) intern(b []byte) string {
	if s, ok := d.names[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(s) <= maxInternedLen {
		if d.names == nil {
			d.names = make(map[string]string, 64)
		}
		if len(d.names) < maxInterned {
			d.names[s] = s
		}
	}
	return s
}

// lookup follows a dotted path through objects; nil when it leads nowhere.
func lookup(v *fastjson.Value, path string) *fastjson.Value {
	for v != nil {
		seg, rest, more := strings.Cut(path, ".")
		if v.Type() != fastjson.TypeObject {
			return nil
		}
		v = v.GetObject().Get(seg)
		if !more {
			return v
		}
		path = rest
	}
	return nil
}

func typeName(v *fastjson.Value) string {
	if v == nil {
		return "missing"
	}
	switch v.Type() {
	case fastjson.TypeObject:
		return "an object"
	case fastjson.TypeArray:
		return "an array"
	case fastjson.TypeString:
		return "a string"
	case fastjson.TypeNumber:
		return "a number"
	case fastjson.TypeTrue, fastjson.TypeFalse:
		return "a boolean"
	}
	return "null"
}

// timeOf reads the time field of a reading; def when it has none.
func (d *Decoder) timeOf(v *fastjson.Value, def time.Time) (time.Time, *BadInputError) {
	if d.f.TimeField == "" {
		return def, nil
	}
	tv := lookup(v, d.f.TimeField)
	if tv == nil || tv.Type() == fastjson.TypeNull {
		return def, nil
	}
	t, err := parseTime(tv, d.f.TimeFormat)
	if err != nil {
		return time.Time{}, &BadInputError{Reason: ReasonBadTimestamp, Err: fmt.Errorf("time field %s: %w", d.f.TimeField, err)}
	}
	return t, nil
}

// The range of time InfluxDB and a nanosecond int64 can hold.
const (
	minYear = 1678
	maxYear = 2261
)

var errNotFinite = errors.New("not a finite number")

func parseTime(v *fastjson.Value, format TimeFormat) (time.Time, error) {
	switch v.Type() {
	case fastjson.TypeNumber:
		if format == TimeRFC3339 {
			return time.Time{}, errors.New("want an RFC 3339 string, got a number")
		}
		if n, err := v.Int64(); err == nil {
			return unixInt(n, format)
		}
		x, err := v.Float64()
		if err != nil {
			return time.Time{}, err
		}
		return unixFloat(x, format)
	case fastjson.TypeString:
		s := string(v.GetStringBytes())
		if format == TimeRFC3339 || (format == TimeAuto || format == "") && looksRFC3339(s) {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time such as 2024-11-28T10:15:00.123+01:00", s)
			}
			if y := t.Year(); y < minYear || y > maxYear {
				return time.Time{}, fmt.Errorf("%q is outside the years %d to %d", s, minYear, maxYear)
			}
			return t, nil
		}
		// Some publishers quote their Unix timestamps.
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return unixInt(n, format)
		}
		if x, err := strconv.ParseFloat(s, 64); err == nil {
			return unixFloat(x, format)
		}
		return time.Time{}, fmt.Errorf("%q is not a %s timestamp", s, formatName(format))
	}
	return time.Time{}, fmt.Errorf("want a number or a string, got %s", typeName(v))
}

func looksRFC3339(s string) bool {
	return len(s) >= 20 && s[4] == '-' && s[7] == '-'
}

func formatName(f TimeFormat) string {
	if f == "" {
		return string(TimeAuto)
	}
	return string(f)
}

// unitPerSecond returns how many of the format's units make a second. Auto
// guesses by magnitude: as seconds, 1e11 is the year 5138; as
// milliseconds, 1973; so each unit owns three decades of magnitude.
func unitPerSecond(format TimeFormat, magnitude float64) int64 {
	switch format {
	case TimeUnixS:
		return 1
	case TimeUnixMS:
		return 1e3
	case TimeUnixUS:
		return 1e6
	case TimeUnixNS:
		return 1e9
	}
	switch {
	case magnitude < 1e11:
		return 1
	case magnitude < 1e14:
		return 1e3
	case magnitude < 1e17:
		return 1e6
	}
	return 1e9
}

func unixInt(n int64, format TimeFormat) (time.Time, error) {
	mag := float64(n)
	if n < 0 {
		mag = -mag
	}
	per := unitPerSecond(format, mag)
	sec, rest := n/per, n%per
	if sec < -9223372036 || sec > 9223372035 {
		return time.Time{}, fmt.Errorf("%d is outside the years %d to %d", n, minYear, maxYear)
	}
	return time.Unix(sec, rest*(1e9/per)), nil
}

func unixFloat(x float64, format TimeFormat) (time.Time, error) {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return time.Time{}, errNotFinite
	}
	per := unitPerSecond(format, math.Abs(x))
	secs := x / float64(per)
	if secs < -9223372036 || secs > 9223372035 {
		return time.Time{}, fmt.Errorf("%g is outside the years %d to %d", x, minYear, maxYear)
	}
	// Split in the payload's own unit first: dividing the float by the
	// unit would smear the fraction (…20.1235 ms became …20.123500109).
	whole, frac := math.Modf(x)
	n := int64(whole)
	nsPer := 1e9 / per
	return time.Unix(n/per, (n%per)*nsPer+int64(math.Round(frac*float64(nsPer)))), nil
}
