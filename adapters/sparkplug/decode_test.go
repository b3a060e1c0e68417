package sparkplug

import (
	"encoding/binary"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/noordoostpolder/shopfloor/adapters/sparkplug/sparkplugpb"
	"github.com/noordoostpolder/shopfloor/collector"
)

func le(width int, vs ...uint64) []byte {
	b := make([]byte, 0, width*len(vs))
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, v)[:len(b)+width]
	}
	return b
}

func TestAppendValues(t *testing.T) {
	i := func(v int64) []collector.Value { return []collector.Value{collector.Int(v)} }
	tests := []struct {
		name  string
		dt    DataType
		value any
		want  []collector.Value
		err   string
	}{
		{"int8 negative, 8-bit two's complement", TypeInt8, uint32(0xff), i(-1), ""},
		{"int8 negative, 32-bit two's complement", TypeInt8, uint32(0xffffff80), i(-128), ""},
		{"int8 positive", TypeInt8, uint32(127), i(127), ""},
		{"int16 negative", TypeInt16, uint32(0xffff8000), i(-32768), ""},
		{"int16 negative 16-bit", TypeInt16, uint32(0xfffe), i(-2), ""},
		{"int32 negative", TypeInt32, uint32(0x80000000), i(math.MinInt32), ""},
		{"int32 in long_value", TypeInt32, uint64(0xffffffffffffffff), i(-1), ""},
		{"int64 negative", TypeInt64, uint64(0x8000000000000000), i(math.MinInt64), ""},
		{"int64 max", TypeInt64, uint64(math.MaxInt64), i(math.MaxInt64), ""},
		{"uint8", TypeUInt8, uint32(255), i(255), ""},
		{"uint16", TypeUInt16, uint32(65535), i(65535), ""},
		{"uint32 in long_value", TypeUInt32, uint64(4294967295), i(4294967295), ""},
		{"uint32 in int_value", TypeUInt32, uint32(4294967295), i(4294967295), ""},
		{"uint64 max int64", TypeUInt64, uint64(math.MaxInt64), i(math.MaxInt64), ""},
		{"uint64 above int64", TypeUInt64, uint64(math.MaxUint64), nil, "does not fit"},
		{"float keeps its decimal", TypeFloat, float32(36.2), []collector.Value{collector.Float(36.2)}, ""},
		{"double", TypeDouble, 1e300, []collector.Value{collector.Float(1e300)}, ""},
		{"boolean", TypeBoolean, true, []collector.Value{collector.Bool(true)}, ""},
		{"string", TypeString, "O1234", []collector.Value{collector.String("O1234")}, ""},
		{"text", TypeText, "long\ntext", []collector.Value{collector.String("long\ntext")}, ""},
		{"uuid", TypeUUID, "a-b", []collector.Value{collector.String("a-b")}, ""},
		{"datetime", TypeDateTime, uint64(1764412800123), []collector.Value{collector.String("2025-11-29T10:40:00.123Z")}, ""},
		{"int8 array", TypeInt8Array, []byte{0xff, 1}, []collector.Value{collector.Int(-1), collector.Int(1)}, ""},
		{"uint8 array", TypeUInt8Array, []byte{0xff}, i(255), ""},
		{"int16 array", TypeInt16Array, le(2, 0xfffe, 3), []collector.Value{collector.Int(-2), collector.Int(3)}, ""},
		{"uint16 array", TypeUInt16Array, le(2, 0xfffe), i(0xfffe), ""},
		{"int32 array", TypeInt32Array, le(4, 0xfffffffd), i(-3), ""},
		{"uint32 array", TypeUInt32Array, le(4, 0xfffffffd), i(0xfffffffd), ""},
		{"int64 array", TypeInt64Array, le(8, math.MaxUint64), i(-1), ""},
		{"uint64 array", TypeUInt64Array, le(8, 5), i(5), ""},
		{"uint64 array overflow", TypeUInt64Array, le(8, math.MaxUint64), nil, "does not fit"},
		{"float array", TypeFloatArray, le(4, uint64(math.Float32bits(1.1)), uint64(math.Float32bits(-2.5))), []collector.Value{collector.Float(1.1), collector.Float(-2.5)}, ""},
		{"double array", TypeDoubleArray, le(8, math.Float64bits(0.1)), []collector.Value{collector.Float(0.1)}, ""},
		// The example of the Sparkplug 3.0 specification, 6.4.17.
		{"boolean array", TypeBooleanArray, []byte{12, 0, 0, 0, 0x34, 0xd0}, []collector.Value{
			collector.Bool(false), collector.Bool(false), collector.Bool(true), collector.Bool(true),
			collector.Bool(false), collector.Bool(true), collector.Bool(false), collector.Bool(false),
			collector.Bool(true), collector.Bool(true), collector.Bool(false), collector.Bool(true),
		}, ""},
		{"boolean array too short", TypeBooleanArray, []byte{9, 0, 0, 0, 0xff}, nil, "claims 9"},
		{"string array", TypeStringArray, []byte("ab\x00\x00c\x00"), []collector.Value{collector.String("ab"), collector.String(""), collector.String("c")}, ""},
		{"string array unterminated", TypeStringArray, []byte("ab"), nil, "NUL"},
		{"datetime array", TypeDateTimeArray, le(8, 0), []collector.Value{collector.String("1970-01-01T00:00:00Z")}, ""},
		{"ragged array", TypeInt32Array, []byte{1, 2, 3}, nil, "whole number"},
		{"huge array", TypeUInt8Array, make([]byte, MaxArrayElements+1), nil, "exceeds"},
		{"no value", TypeInt32, nil, nil, "no value"},
		{"wrong field", TypeBoolean, "true", nil, "does not match"},
		{"dataset", TypeDataSet, []byte{1}, nil, "no scalar value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AppendValues(nil, tt.dt, metric("m", tt.dt, tt.value))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				if len(got) != 0 {
					t.Errorf("values %v appended with an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestProperties(t *testing.T) {
	m := metric("m", TypeDouble, 1.0, withProps("EngUnits", " kW ", "Quality", 192))
	unit, q, ok := properties(m.Properties)
	if unit != "kW" || q != collector.QualityGood || !ok {
		t.Errorf("got %q %v %v", unit, q, ok)
	}
	for code, want := range map[int]collector.Quality{0: collector.QualityBad, 100: collector.QualityUncertain, 500: collector.QualityBad, 192: collector.QualityGood} {
		if _, q, _ := properties(metric("m", 0, nil, withProps("quality", code)).Properties); q != want {
			t.Errorf("Quality %d = %v, want %v", code, q, want)
		}
	}
}

func TestDataTypeNames(t *testing.T) {
	if TypeDateTimeArray.String() != "DateTimeArray" || DataType(99).String() != "DataType(99)" {
		t.Error(TypeDateTimeArray.String(), DataType(99).String())
	}
}

func TestDecodePayloadRejectsGarbage(t *testing.T) {
	var p sparkplugpb.Payload
	if err := DecodePayload([]byte{0x0a, 0xff}, &p); err == nil {
		t.Error("truncated payload accepted")
	}
}
