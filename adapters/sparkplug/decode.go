package sparkplug

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/noordoostpolder/shopfloor/adapters/sparkplug/sparkplugpb"
	"github.com/noordoostpolder/shopfloor/collector"
)

// DataType is a Sparkplug B metric datatype (Sparkplug 3.0, section 6.4.16).
type DataType uint32

// Sparkplug B datatypes. The numbers are fixed by the specification.
const (
	TypeUnknown         DataType = 0
	TypeInt8            DataType = 1
	TypeInt16           DataType = 2
	TypeInt32           DataType = 3
	TypeInt64           DataType = 4
	TypeUInt8           DataType = 5
	TypeUInt16          DataType = 6
	TypeUInt32          DataType = 7
	TypeUInt64          DataType = 8
	TypeFloat           DataType = 9
	TypeDouble          DataType = 10
	TypeBoolean         DataType = 11
	TypeString          DataType = 12
	TypeDateTime        DataType = 13
	TypeText            DataType = 14
	TypeUUID            DataType = 15
	TypeDataSet         DataType = 16
	TypeBytes           DataType = 17
	TypeFile            DataType = 18
	TypeTemplate        DataType = 19
	TypePropertySet     DataType = 20
	TypePropertySetList DataType = 21
	TypeInt8Array       DataType = 22
	TypeInt16Array      DataType = 23
	TypeInt32Array      DataType = 24
	TypeInt64Array      DataType = 25
	TypeUInt8Array      DataType = 26
	TypeUInt16Array     DataType = 27
	TypeUInt32Array     DataType = 28
	TypeUInt64Array     DataType = 29
	TypeFloatArray      DataType = 30
	TypeDoubleArray     DataType = 31
	TypeBooleanArray    DataType = 32
	TypeStringArray     DataType = 33
	TypeDateTimeArray   DataType = 34
)

var typeNames = [...]string{
	"Unknown", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
	"Float", "Double", "Boolean", "String", "DateTime", "Text", "UUID", "DataSet", "Bytes",
	"File", "Template", "PropertySet", "PropertySetList", "Int8Array", "Int16Array",
	"Int32Array", "Int64Array", "UInt8Array", "UInt16Array", "UInt32Array", "UInt64Array",
	"FloatArray", "DoubleArray", "BooleanArray", "StringArray", "DateTimeArray",
}

// String returns the specification's name of the datatype.
func (t DataType) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return "DataType(" + strconv.FormatUint(uint64(t), 10) + ")"
}

// IsArray reports whether t is one of the Sparkplug 3.0 array types, whose
// elements are packed into bytes_value.
func (t DataType) IsArray() bool { return t >= TypeInt8Array && t <= TypeDateTimeArray }

// supported reports whether values of t become samples. DataSet, Bytes,
// File and property sets have no place in a time series of scalars;
// Templates are flattened into their members elsewhere.
func (t DataType) supported() bool {
	switch t {
	case TypeUnknown, TypeDataSet, TypeBytes, TypeFile, TypePropertySet, TypePropertySetList:
		return false
	}
	return int(t) < len(typeNames)
}

// MaxArrayElements bounds how many samples one array metric becomes: an
// array is a handful of axes or channels, and a megabyte blob mislabelled
// as an array must not turn into a million InfluxDB fields.
const MaxArrayElements = 1024

// ErrNoValue is returned for a metric that carries neither a value nor
// is_null.
var ErrNoValue = errors.New("metric has no value")

// DecodePayload parses a Sparkplug B payload into p, which it resets
// first, so one p can be reused message after message.
func DecodePayload(data []byte, p *sparkplugpb.Payload) error {
	p.Reset()
	if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, p); err != nil {
		return fmt.Errorf("not a Sparkplug B protobuf payload: %w", err)
	}
	return nil
}

// AppendValues converts the value of m, read as datatype t, and appends
// it to dst: one value for a scalar, one per element for an array. It
// returns an error, and dst unchanged, when the value does not fit t.
// Templates, DataSets, Bytes and Files are not values here.
//
// Signed integers narrower than 64 bits travel in the unsigned int_value
// field; encoders differ on whether -1 is sent as 0xFF or 0xFFFFFFFF, so
// the value is sign-extended from the width of t, which reads both right.
func AppendValues(dst []collector.Value, t DataType, m *sparkplugpb.Payload_Metric) ([]collector.Value, error) {
	switch t {
	case TypeInt8, TypeInt16, TypeInt32, TypeUInt8, TypeUInt16, TypeUInt32:
		u, ok := intField(m)
		if !ok {
			return dst, noValue(t, m)
		}
		return append(dst, collector.Int(extend(t, u))), nil
	case TypeInt64:
		u, ok := intField(m)
		if !ok {
			return dst, noValue(t, m)
		}
		return append(dst, collector.Int(int64(u))), nil
	case TypeUInt64:
		u, ok := intField(m)
		if !ok {
			return dst, noValue(t, m)
		}
		if u > math.MaxInt64 {
			// The collector's integers are signed 64-bit; a float would
			// silently round the counter, so refuse it instead.
			return dst, fmt.Errorf("UInt64 value %d does not fit a signed 64-bit integer", u)
		}
		return append(dst, collector.Int(int64(u))), nil
	case TypeFloat, TypeDouble:
		switch v := m.GetValue().(type) {
		case *sparkplugpb.Payload_Metric_FloatValue:
			return append(dst, collector.Float(widen(v.FloatValue))), nil
		case *sparkplugpb.Payload_Metric_DoubleValue:
			return append(dst, collector.Float(v.DoubleValue)), nil
		}
		return dst, noValue(t, m)
	case TypeBoolean:
		if v, ok := m.GetValue().(*sparkplugpb.Payload_Metric_BooleanValue); ok {
			return append(dst, collector.Bool(v.BooleanValue)), nil
		}
		return dst, noValue(t, m)
	case TypeString, TypeText, TypeUUID:
		if v, ok := m.GetValue().(*sparkplugpb.Payload_Metric_StringValue); ok {
			return append(dst, collector.String(v.StringValue)), nil
		}
		return dst, noValue(t, m)
	case TypeDateTime:
		u, ok := intField(m)
		if !ok {
			return dst, noValue(t, m)
		}
		return append(dst, dateTime(int64(u))), nil
	}
	if t.IsArray() {
		v, ok := m.GetValue().(*sparkplugpb.Payload_Metric_BytesValue)
		if !ok {
			return dst, noValue(t, m)
		}
		return appendArray(dst, t, v.BytesValue)
	}
	return dst, fmt.Errorf("datatype %s has no scalar value", t)
}

// intField reads int_value or long_value: Tahu's encoders put UInt32 into
// long_value and others into int_value, so either is accepted for every
// integer type.
func intField(m *sparkplugpb.Payload_Metric) (uint64, bool) {
	switch v := m.GetValue().(type) {
	case *sparkplugpb.Payload_Metric_IntValue:
		return uint64(v.IntValue), true
	case *sparkplugpb.Payload_Metric_LongValue:
		return v.LongValue, true
	}
	return 0, false
}

func extend(t DataType, u uint64) int64 {
	switch t {
	case TypeInt8:
		return int64(int8(u))
	case TypeInt16:
		return int64(int16(u))
	case TypeInt32:
		return int64(int32(u))
	case TypeUInt8:
		return int64(uint8(u))
	case TypeUInt16:
		return int64(uint16(u))
	case TypeUInt32:
		return int64(uint32(u))
	}
	return int64(u)
}

func noValue(t DataType, m *sparkplugpb.Payload_Metric) error {
	if m.GetValue() == nil {
		return fmt.Errorf("%w for datatype %s", ErrNoValue, t)
	}
	return fmt.Errorf("datatype %s does not match the value field %T", t, m.GetValue())
}

// widen turns a float32 into the float64 with the same shortest decimal
// form, so 36.2f is stored as 36.2 and not as 36.20000076293945, which is
// what the sender meant and what a dashboard should show.
func widen(f float32) float64 {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return float64(f)
	}
	var buf [32]byte
	b := strconv.AppendFloat(buf[:0], float64(f), 'g', -1, 32)
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return float64(f)
	}
	return v
}

// dateTime renders a Sparkplug DateTime (milliseconds since the epoch) as
// RFC 3339 text in UTC: the collector has no time kind, and text is
// unambiguous where a bare number would read as a count.
func dateTime(ms int64) collector.Value {
	return collector.String(time.UnixMilli(ms).UTC().Format(time.RFC3339Nano))
}

// appendArray unpacks a Sparkplug 3.0 array (section 6.4.17): fixed-width
// little-endian elements, BooleanArray as a 4-byte count followed by bits
// packed most significant first, StringArray as NUL-terminated strings.
func appendArray(dst []collector.Value, t DataType, b []byte) ([]collector.Value, error) {
	var width int
	switch t {
	case TypeInt8Array, TypeUInt8Array:
		width = 1
	case TypeInt16Array, TypeUInt16Array:
		width = 2
	case TypeInt32Array, TypeUInt32Array, TypeFloatArray:
		width = 4
	case TypeInt64Array, TypeUInt64Array, TypeDoubleArray, TypeDateTimeArray:
		width = 8
	case TypeBooleanArray:
		if len(b) < 4 {
			return dst, fmt.Errorf("%s of %d bytes lacks its 4-byte count", t, len(b))
		}
		n := binary.LittleEndian.Uint32(b)
		if uint64(n) > uint64(len(b)-4)*8 {
			return dst, fmt.Errorf("%s claims %d values in %d bytes", t, n, len(b)-4)
		}
		if n > MaxArrayElements {
			return dst, fmt.Errorf("%s of %d elements exceeds %d", t, n, MaxArrayElements)
		}
		for i := range int(n) {
			dst = append(dst, collector.Bool(b[4+i/8]&(0x80>>(i%8)) != 0))
		}
		return dst, nil
	case TypeStringArray:
		if len(b) > 0 && b[len(b)-1] != 0 {
			return dst, fmt.Errorf("%s does not end with NUL", t)
		}
		if n := strings.Count(string(b), "\x00"); n > MaxArrayElements {
			return dst, fmt.Errorf("%s of %d elements exceeds %d", t, n, MaxArrayElements)
		}
		for len(b) > 0 {
			i := 0
			for b[i] != 0 {
				i++
			}
			dst = append(dst, collector.String(string(b[:i])))
			b = b[i+1:]
		}
		return dst, nil
	}
	if len(b)%width != 0 {
		return dst, fmt.Errorf("%s of %d bytes is not a whole number of %d-byte elements", t, len(b), width)
	}
	if len(b)/width > MaxArrayElements {
		return dst, fmt.Errorf("%s of %d elements exceeds %d", t, len(b)/width, MaxArrayElements)
	}
	start := len(dst)
	for ; len(b) > 0; b = b[width:] {
		var v collector.Value
		switch t {
		case TypeInt8Array:
			v = collector.Int(int64(int8(b[0])))
		case TypeUInt8Array:
			v = collector.Int(int64(b[0]))
		case TypeInt16Array:
			v = collector.Int(int64(int16(binary.LittleEndian.Uint16(b))))
		case TypeUInt16Array:
			v = collector.Int(int64(binary.LittleEndian.Uint16(b)))
		case TypeInt32Array:
			v = collector.Int(int64(int32(binary.LittleEndian.Uint32(b))))
		case TypeUInt32Array:
			v = collector.Int(int64(binary.LittleEndian.Uint32(b)))
		case TypeFloatArray:
			v = collector.Float(widen(math.Float32frombits(binary.LittleEndian.Uint32(b))))
		case TypeInt64Array:
			v = collector.Int(int64(binary.LittleEndian.Uint64(b)))
		case TypeUInt64Array:
			u := binary.LittleEndian.Uint64(b)
			if u > math.MaxInt64 {
				return dst[:start], fmt.Errorf("%s element %d does not fit a signed 64-bit integer", t, u)
			}
			v = collector.Int(int64(u))
		case TypeDoubleArray:
			v = collector.Float(math.Float64frombits(binary.LittleEndian.Uint64(b)))
		case TypeDateTimeArray:
			v = dateTime(int64(binary.LittleEndian.Uint64(b)))
		}
		dst = append(dst, v)
	}
	return dst, nil
}

// Property keys read from a metric's PropertySet. Sparkplug fixes no
// names for them; these are the ones Ignition and Tahu-based edge nodes
// send, matched without regard to case.
var unitKeys = []string{"engUnit", "engUnits", "engineeringUnits", "unit", "units"}

const qualityKey = "Quality"

// properties reads the engineering unit and the quality code from ps.
// hasQuality is false when no quality property is present.
func properties(ps *sparkplugpb.Payload_PropertySet) (unit string, q collector.Quality, hasQuality bool) {
	if ps == nil {
		return "", collector.QualityGood, false
	}
	keys, values := ps.GetKeys(), ps.GetValues()
	for i, k := range keys {
		if i >= len(values) {
			break
		}
		v := values[i]
		if v.GetIsNull() {
			continue
		}
		switch {
		case strings.EqualFold(k, qualityKey):
			var code int64
			switch x := v.GetValue().(type) {
			case *sparkplugpb.Payload_PropertyValue_IntValue:
				code = int64(int32(x.IntValue))
			case *sparkplugpb.Payload_PropertyValue_LongValue:
				code = int64(x.LongValue)
			default:
				continue
			}
			q, hasQuality = qualityOf(code), true
		case unit == "" && isUnitKey(k):
			if s, ok := v.GetValue().(*sparkplugpb.Payload_PropertyValue_StringValue); ok {
				unit = strings.TrimSpace(s.StringValue)
			}
		}
	}
	return unit, q, hasQuality
}

func isUnitKey(k string) bool {
	for _, u := range unitKeys {
		if strings.EqualFold(k, u) {
			return true
		}
	}
	return false
}

// qualityOf maps the OPC DA style quality codes Ignition puts into the
// Quality property: 192 good, 64..191 uncertain, below 64 bad, and 500
// (stale) and 600 (error) bad too.
func qualityOf(code int64) collector.Quality {
	switch {
	case code >= 192 && code < 256:
		return collector.QualityGood
	case code >= 64 && code < 192:
		return collector.QualityUncertain
	}
	return collector.QualityBad
}
