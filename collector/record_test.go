package collector

import (
	"math"
	"testing"
	"time"
)

func recordSamples() []Sample {
	ts := time.Date(2026, 11, 29, 8, 0, 0, 123456789, time.UTC)
	a := Asset{Site: "plant", Area: "hall-2", Line: "line-1", Machine: "cnc-07"}
	return []Sample{
		{Asset: a, MachineType: "cnc", Signal: SignalSpindleSpeed, Value: Float(12000.5), Unit: "rpm", SourceTime: ts, ReceiveTime: ts.Add(time.Millisecond)},
		{Asset: a, MachineType: "cnc", Signal: SignalPartCountGood, Value: Int(-42), SourceTime: ts, ReceiveTime: ts},
		{Asset: a, MachineType: "cnc", Signal: SignalState, Value: String("running"), SourceTime: ts},
		{Asset: a, MachineType: "cnc", Signal: "door_open", Value: Bool(true), Quality: QualityUncertain, SourceTime: ts},
		{Asset: a, MachineType: "cnc", Signal: SignalTemperature, Quality: QualityBad, SourceTime: ts},
		{Asset: Asset{Machine: "robot-1"}, MachineType: "robot", Signal: "x", Value: Float(math.Inf(-1)), Unit: "mm"},
		{Asset: Asset{Site: "plant", Line: "line-1"}, Signal: "oee", Value: Float(0.61), SourceTime: ts, Window: "shift"},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	in := recordSamples()
	rec := AppendRecord(nil, in)
	var d RecordDecoder
	out, err := d.Decode(rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("decoded %d samples, want %d", len(out), len(in))
	}
	for i := range in {
		a, b := in[i], out[i]
		if a.Asset != b.Asset || a.MachineType != b.MachineType || a.Signal != b.Signal || a.Unit != b.Unit ||
			a.Quality != b.Quality || a.Window != b.Window || a.Value.Kind() != b.Value.Kind() || a.Value.Format() != b.Value.Format() ||
			!a.SourceTime.Equal(b.SourceTime) || !a.ReceiveTime.Equal(b.ReceiveTime) || a.SourceTime.IsZero() != b.SourceTime.IsZero() {
			t.Errorf("sample %d:\n got %+v\nwant %+v", i, b, a)
		}
	}
	// Truncations anywhere are errors, never panics or silent short reads.
	for n := 0; n < len(rec); n++ {
		if _, err := d.Decode(rec[:n], nil); err == nil {
			t.Fatalf("Decode of the first %d of %d bytes succeeded", n, len(rec))
		}
	}
}

func TestRecordDecodeAllocatesNoStrings(t *testing.T) {
	rec := AppendRecord(nil, recordSamples())
	var d RecordDecoder
	dst, _ := d.Decode(rec, nil)
	allocs := testing.AllocsPerRun(100, func() { dst, _ = d.Decode(rec, dst[:0]) })
	if allocs != 0 {
		t.Errorf("%v allocations per decode of known names, want 0", allocs)
	}
}

func FuzzRecordDecode(f *testing.F) {
	f.Add(AppendRecord(nil, recordSamples()))
	f.Add([]byte{recordVersion, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var d RecordDecoder
		out, err := d.Decode(b, nil)
		if err != nil {
			return
		}
		// What decodes must encode back to the same samples.
		again, err := d.Decode(AppendRecord(nil, out), nil)
		if err != nil || len(again) != len(out) {
			t.Fatalf("re-decode: %v, %d samples, want %d", err, len(again), len(out))
		}
	})
}

func BenchmarkRecord(b *testing.B) {
	in := recordSamples()[:4]
	var d RecordDecoder
	var rec []byte
	var out []Sample
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		rec = AppendRecord(rec[:0], in)
		out, _ = d.Decode(rec, out[:0])
	}
}
