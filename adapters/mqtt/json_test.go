package mqtt

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
)

// render writes samples as signal=kind(value)@time so a table can state
// them compactly; rcv stands for the receive time.
func render(samples []collector.Sample, received time.Time) []string {
	out := make([]string, len(samples))
	for i, s := range samples {
		at := "rcv"
		if !s.SourceTime.Equal(received) {
			at = s.SourceTime.UTC().Format(time.RFC3339Nano)
		}
		out[i] = s.Signal + "=" + s.Value.GoString() + "@" + at
	}
	return out
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeJSON(t *testing.T) {
	received := time.Date(2024, 11, 28, 12, 0, 0, 0, time.UTC)
	ts := JSONFormat{TimeField: "ts"}
	tests := []struct {
		name    string
		payload string // or @file in testdata
		f       JSONFormat
		want    []string
		reason  string   // whole-message error reason
		partial []string // per-value error reasons
	}{
		{
			name: "flat", payload: "@flat.json", f: ts,
			want: []string{
				"spindle_speed=float(12000.5)@2024-11-28T10:33:20.123Z",
				"spindle_load=float(41.2)@2024-11-28T10:33:20.123Z",
				"feed_rate=float(1500)@2024-11-28T10:33:20.123Z",
				"coolant_temp=float(22.5)@2024-11-28T10:33:20.123Z",
				"state=string(running)@2024-11-28T10:33:20.123Z",
				"part_count=float(1234)@2024-11-28T10:33:20.123Z",
			},
		},
		{
			name: "nested paths, scalar arrays, nulls skipped, nested time field", payload: "@nested.json",
			f: JSONFormat{TimeField: "meta.ts", TimeFormat: TimeRFC3339},
			want: []string{
				"meta.machine=string(cnc-07)@2024-11-28T09:15:00.5Z",
				"axis.x.load=float(12.5)@2024-11-28T09:15:00.5Z",
				"axis.x.pos=float(-3)@2024-11-28T09:15:00.5Z",
				"axis.y.load=float(8)@2024-11-28T09:15:00.5Z",
				"temps.0=float(21.5)@2024-11-28T09:15:00.5Z",
				"temps.1=float(22)@2024-11-28T09:15:00.5Z",
				"door_open=bool(false)@2024-11-28T09:15:00.5Z",
			},
		},
		{
			name: "readings path: root fields once, reading time else root time", payload: "@readings.json",
			f: JSONFormat{TimeField: "ts", Readings: "data"},
			want: []string{
				"device=string(robot-2)@2024-11-28T10:33:20Z",
				"torque.0=float(1.5)@2024-11-28T10:33:21Z",
				"torque.1=float(2.5)@2024-11-28T10:33:21Z",
				"tcp_speed=float(250)@2024-11-28T10:33:20Z",
				"payload=float(4.2)@2024-11-28T10:33:23Z",
			},
		},
		{
			name: "nested readings path", payload: `{"body":{"items":[{"a":1}],"n":2}}`,
			f:    JSONFormat{Readings: "body.items"},
			want: []string{"body.n=float(2)@rcv", "a=float(1)@rcv"},
		},
		{
			name: "top-level array", payload: "@toplevel_array.json", f: ts,
			want: []string{
				"state=string(idle)@2024-11-28T10:33:20Z",
				"state=string(running)@2024-11-28T10:33:21Z",
				"cycle=bool(true)@2024-11-28T10:33:21Z",
			},
		},
		{name: "missing time field uses receive time", payload: `{"x":1}`, f: ts, want: []string{"x=float(1)@rcv"}},
		{name: "null time field uses receive time", payload: `{"ts":null,"x":1}`, f: ts, want: []string{"x=float(1)@rcv"}},
		{name: "no time field configured", payload: `{"ts":5,"x":1}`, f: JSONFormat{}, want: []string{"ts=float(5)@rcv", "x=float(1)@rcv"}},
		{name: "unix_s", payload: `{"ts":1732790000,"x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeUnixS}, want: []string{"x=float(1)@2024-11-28T10:33:20Z"}},
		{name: "unix_s fractional", payload: `{"ts":1732790000.25,"x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeUnixS}, want: []string{"x=float(1)@2024-11-28T10:33:20.25Z"}},
		{name: "unix_ms", payload: `{"ts":1732790000123,"x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeUnixMS}, want: []string{"x=float(1)@2024-11-28T10:33:20.123Z"}},
		{name: "unix_us", payload: `{"ts":1732790000123456,"x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeUnixUS}, want: []string{"x=float(1)@2024-11-28T10:33:20.123456Z"}},
		{name: "unix_ns", payload: `{"ts":1732790000123456789,"x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeUnixNS}, want: []string{"x=float(1)@2024-11-28T10:33:20.123456789Z"}},
		{name: "unix_ms as a quoted number", payload: `{"ts":"1732790000123","x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeUnixMS}, want: []string{"x=float(1)@2024-11-28T10:33:20.123Z"}},
		{name: "rfc3339 with offset", payload: `{"ts":"2024-11-28T11:33:20.123+01:00","x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeRFC3339}, want: []string{"x=float(1)@2024-11-28T10:33:20.123Z"}},
		{name: "auto rfc3339", payload: `{"ts":"2024-11-28T10:33:20Z","x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeAuto}, want: []string{"x=float(1)@2024-11-28T10:33:20Z"}},
		{name: "auto seconds", payload: `{"ts":1732790000,"x":1}`, f: ts, want: []string{"x=float(1)@2024-11-28T10:33:20Z"}},
		{name: "auto milliseconds", payload: `{"ts":1732790000123,"x":1}`, f: ts, want: []string{"x=float(1)@2024-11-28T10:33:20.123Z"}},
		{name: "auto microseconds", payload: `{"ts":1732790000123456,"x":1}`, f: ts, want: []string{"x=float(1)@2024-11-28T10:33:20.123456Z"}},
		{name: "auto nanoseconds", payload: `{"ts":1732790000123456789,"x":1}`, f: ts, want: []string{"x=float(1)@2024-11-28T10:33:20.123456789Z"}},
		{name: "auto milliseconds as float", payload: `{"ts":1.7327900001235e12,"x":1}`, f: ts, want: []string{"x=float(1)@2024-11-28T10:33:20.1235Z"}},
		{name: "invalid json", payload: `{"x":1,`, f: ts, reason: ReasonInvalidJSON},
		{name: "empty payload", payload: ``, f: ts, reason: ReasonInvalidJSON},
		{name: "malformed number", payload: `{"x":1-2}`, f: ts, reason: ReasonInvalidJSON},
		{name: "bad timestamp string", payload: `{"ts":"yesterday","x":1}`, f: ts, reason: ReasonBadTimestamp},
		{name: "bad timestamp rfc3339", payload: `{"ts":"2024-13-01T00:00:00Z","x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeRFC3339}, reason: ReasonBadTimestamp},
		{name: "rfc3339 given a number", payload: `{"ts":1732790000,"x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeRFC3339}, reason: ReasonBadTimestamp},
		{name: "bad timestamp type", payload: `{"ts":true,"x":1}`, f: ts, reason: ReasonBadTimestamp},
		{name: "timestamp out of range", payload: `{"ts":1e300,"x":1}`, f: JSONFormat{TimeField: "ts", TimeFormat: TimeUnixS}, reason: ReasonBadTimestamp},
		{name: "timestamp year 1", payload: `{"ts":"0001-01-01T00:00:00Z","x":1}`, f: ts, reason: ReasonBadTimestamp},
		{name: "bad timestamp in one reading refuses the message", payload: `[{"ts":1,"x":1},{"ts":"no","x":2}]`, f: ts, reason: ReasonBadTimestamp},
		{
			name: "unknown_fields pass", payload: `{"a":1,"b":{"c":2},"d":3}`,
			f:    JSONFormat{Fields: []string{"a"}, UnknownFields: UnknownPass},
			want: []string{"a=float(1)@rcv", "b.c=float(2)@rcv", "d=float(3)@rcv"},
		},
		{
			name: "unknown_fields drop, a path allows its subtree", payload: `{"a":1,"b":{"c":2},"bc":4,"d":3,"ts":1732790000}`,
			f:    JSONFormat{TimeField: "ts", Fields: []string{"a", "b"}, UnknownFields: UnknownDrop},
			want: []string{"a=float(1)@2024-11-28T10:33:20Z", "b.c=float(2)@2024-11-28T10:33:20Z"},
		},
		{
			name: "unknown_fields reject", payload: `{"a":1,"d":3}`,
			f:      JSONFormat{Fields: []string{"a"}, UnknownFields: UnknownReject},
			reason: ReasonUnknownField,
		},
		{
			name: "unknown_fields reject passes known fields", payload: `{"a":1,"ts":1732790000}`,
			f:    JSONFormat{TimeField: "ts", Fields: []string{"a"}, UnknownFields: UnknownReject},
			want: []string{"a=float(1)@2024-11-28T10:33:20Z"},
		},
		{name: "nulls skipped", payload: `{"a":null,"b":{"c":null},"d":[null],"e":1}`, f: ts, want: []string{"e=float(1)@rcv"}},
		{
			name: "inf dropped, rest kept", payload: `{"a":1e999,"b":2,"c":-1e999,"d":NaN}`, f: ts,
			want:    []string{"b=float(2)@rcv"},
			partial: []string{ReasonNonFinite, ReasonNonFinite, ReasonNonFinite},
		},
		{
			name: "empty and dotted field names dropped, rest kept", payload: `{"":1,"a.b":2,"c":3}`, f: ts,
			want:    []string{"c=float(3)@rcv"},
			partial: []string{ReasonBadFieldName, ReasonBadFieldName},
		},
		{name: "not an object: number", payload: `42`, f: ts, reason: ReasonNotAnObject},
		{name: "not an object: string", payload: `"x"`, f: ts, reason: ReasonNotAnObject},
		{name: "not an object: array of numbers", payload: `[1,2]`, f: ts, reason: ReasonNotAnObject},
		{name: "readings missing", payload: `{"x":1}`, f: JSONFormat{Readings: "data"}, reason: ReasonNotAnObject},
		{name: "readings not an array", payload: `{"data":{"x":1}}`, f: JSONFormat{Readings: "data"}, reason: ReasonNotAnObject},
		{name: "readings payload not an object", payload: `[{"x":1}]`, f: JSONFormat{Readings: "data"}, reason: ReasonNotAnObject},
		{name: "empty object", payload: `{}`, f: ts, want: []string{}},
		{name: "escaped strings are unescaped", payload: `{"s":"a\"b\u00e9"}`, f: ts, want: []string{`s=string(a"bé)@rcv`}},
	}
	var d Decoder
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			payload := []byte(tc.payload)
			if name, ok := strings.CutPrefix(tc.payload, "@"); ok {
				payload = fixture(t, name)
			}
			for _, decode := range []struct {
				name string
				fn   func() ([]collector.Sample, error)
			}{
				{"DecodeJSON", func() ([]collector.Sample, error) { return DecodeJSON(payload, tc.f, received, nil) }},
				{"reused Decoder", func() ([]collector.Sample, error) {
					return d.Decode(payload, tc.f, received, make([]collector.Sample, 0, 2))
				}},
			} {
				got, err := decode.fn()
				if tc.reason != "" {
					var bad *BadInputError
					var partial ValueErrors
					if errors.As(err, &partial) || !errors.As(err, &bad) || bad.Reason != tc.reason {
						t.Fatalf("%s: err = %v, want a *BadInputError with reason %s", decode.name, err, tc.reason)
					}
					if got != nil {
						t.Errorf("%s: samples = %v, want nil with a whole-message error", decode.name, got)
					}
					continue
				}
				var reasons []string
				if err != nil {
					var partial ValueErrors
					if !errors.As(err, &partial) {
						t.Fatalf("%s: err = %v, want nil or ValueErrors", decode.name, err)
					}
					for _, e := range partial {
						reasons = append(reasons, e.Reason)
					}
				}
				if !slices.Equal(reasons, tc.partial) {
					t.Errorf("%s: per-value reasons = %v, want %v (err %v)", decode.name, reasons, tc.partial, err)
				}
				if r := render(got, received); !slices.Equal(r, tc.want) {
					t.Errorf("%s: samples\n got  %q\n want %q", decode.name, r, tc.want)
				}
				for _, s := range got {
					if !s.ReceiveTime.Equal(received) || s.Quality != collector.QualityGood || s.Asset != (collector.Asset{}) {
						t.Errorf("%s: sample %+v: want receive time, good quality, empty asset", decode.name, s)
					}
				}
			}
		})
	}
}

// TestDecodeJSONCopiesStrings guards against handing out strings that
// alias the parser's buffer, which the next message would overwrite.
func TestDecodeJSONCopiesStrings(t *testing.T) {
	var d Decoder
	first, err := d.Decode([]byte(`{"state_of_a_long_enough_name":"running_with_a_long_enough_value"}`), JSONFormat{}, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Decode([]byte(`{"xxxxxxxxxxxxxxxxxxxxxxxxxxxxx":"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"}`), JSONFormat{}, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	if first[0].Signal != "state_of_a_long_enough_name" || first[0].Value.Str() != "running_with_a_long_enough_value" {
		t.Fatalf("first sample changed after the next decode: %+v", first[0])
	}
}

func BenchmarkDecodeJSON(b *testing.B) {
	payload := fixture(b, "flat.json")
	f := JSONFormat{TimeField: "ts", TimeFormat: TimeAuto, UnknownFields: UnknownPass}
	received := time.Now()
	b.Run("Decoder", func(b *testing.B) {
		var d Decoder
		dst := make([]collector.Sample, 0, 16)
		b.ReportAllocs()
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			var err error
			dst, err = d.Decode(payload, f, received, dst[:0])
			if err != nil || len(dst) != 6 {
				b.Fatal(err, len(dst))
			}
		}
	})
	b.Run("DecodeJSON", func(b *testing.B) {
		dst := make([]collector.Sample, 0, 16)
		b.ReportAllocs()
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			var err error
			dst, err = DecodeJSON(payload, f, received, dst[:0])
			if err != nil || len(dst) != 6 {
				b.Fatal(err, len(dst))
			}
		}
	})
}

func FuzzDecodeJSON(f *testing.F) {
	for _, name := range []string{"flat.json", "nested.json", "readings.json", "toplevel_array.json"} {
		f.Add(fixture(f, name), "ts", "data")
	}
	for _, p := range []string{
		`{}`, `[]`, `42`, `null`, `{"ts":"2024-11-28T10:33:20Z","a":{"b":[1,{"c":true}]}}`,
		`{"ts":1e999,"x":1}`, `{"x":NaN,"y":-Inf}`, `{"ts":-1,"x":"s"}`, `{"":{"":1}}`,
		`{"ts":"0001-01-01T00:00:00Z","x":1}`, `{"data":[{"ts":9223372036854775807,"v":1}]}`,
		`[{"ts":"1732790000","x":[[1],[2,[3]]]}]`, `{"a":"\ud800"}`, `{"ts":{"x":1},"y":2}`,
	} {
		f.Add([]byte(p), "ts", "")
	}
	received := time.Date(2024, 11, 28, 12, 0, 0, 0, time.UTC)
	formats := []TimeFormat{TimeAuto, TimeUnixS, TimeUnixMS, TimeUnixUS, TimeUnixNS, TimeRFC3339}
	var d Decoder
	f.Fuzz(func(t *testing.T, payload []byte, timeField, readings string) {
		if validPath(timeField) != nil {
			timeField = ""
		}
		if validPath(readings) != nil {
			readings = ""
		}
		format := formats[len(payload)%len(formats)]
		jf := JSONFormat{TimeField: timeField, TimeFormat: format, Readings: readings}
		got, err := d.Decode(payload, jf, received, nil)
		var partial ValueErrors
		if err != nil && !errors.As(err, &partial) {
			var bad *BadInputError
			if !errors.As(err, &bad) || bad.Reason == "" {
				t.Fatalf("error %v is not a *BadInputError with a reason", err)
			}
			if got != nil {
				t.Fatalf("whole-message error %v came with samples", err)
			}
			return
		}
		for _, s := range got {
			if s.Signal == "" {
				t.Fatalf("empty signal in %+v", s)
			}
			if s.SourceTime.IsZero() || s.ReceiveTime.IsZero() {
				t.Fatalf("zero time in %+v", s)
			}
			if x, ok := s.Value.AsFloat(); ok && (math.IsNaN(x) || math.IsInf(x, 0)) {
				t.Fatalf("non-finite value in %+v", s)
			}
		}
	})
}
