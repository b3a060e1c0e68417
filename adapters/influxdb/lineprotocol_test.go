package influxdb

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/noordoostpolder/shopfloor/collector"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

var (
	t0    = time.Date(2024, 3, 5, 14, 30, 0, 123456789, time.UTC)
	mill1 = collector.Asset{Site: "emmeloord", Area: "machining", Line: "l1", Machine: "mill-1"}
)

func sample(asset collector.Asset, typ, signal string, v collector.Value, ts time.Time) collector.Sample {
	return collector.Sample{Asset: asset, MachineType: typ, Signal: signal, Value: v, SourceTime: ts, ReceiveTime: ts.Add(time.Second)}
}

func withQuality(s collector.Sample, q collector.Quality) collector.Sample {
	s.Quality = q
	return s
}

func TestAppendLinesGolden(t *testing.T) {
	cases := []struct {
		name    string
		samples []collector.Sample
	}{
		{"grouping", []collector.Sample{
			// One message: three signals, one point.
			sample(mill1, "cnc", "spindle_speed_rpm", collector.Float(12000), t0),
			sample(mill1, "cnc", "part_count_good", collector.Int(42), t0),
			sample(mill1, "cnc", "state", collector.String("running"), t0),
			// Next message of the same machine: a new point.
			sample(mill1, "cnc", "spindle_speed_rpm", collector.Float(11990.5), t0.Add(time.Second)),
			// Another machine at the same time: another series.
			sample(collector.Asset{Site: "emmeloord", Area: "machining", Line: "l1", Machine: "mill-2"}, "cnc", "state", collector.String("idle"), t0.Add(time.Second)),
			// A repeated signal within one run starts a new line.
			sample(mill1, "robot", "joint_torque_nm", collector.Float(1), t0),
			sample(mill1, "robot", "joint_torque_nm", collector.Float(2), t0),
			// Not consecutive: not merged.
			sample(mill1, "cnc", "power_w", collector.Float(800), t0),
		}},
		{"empty_tags", []collector.Sample{
			sample(collector.Asset{Machine: "press-7"}, "", "power_w", collector.Float(1500), t0),
			sample(collector.Asset{Site: "urk", Line: "l2"}, "robot", "power_w", collector.Float(300), t0),
			sample(collector.Asset{}, "", "power_w", collector.Float(1), t0),
		}},
		{"escaping", []collector.Sample{
			sample(collector.Asset{Site: "Emmeloord Noord", Area: "hal,2", Line: "a=b", Machine: `DMG "Mori"`}, "cnc 5-axis",
				"feed override, pct=", collector.Float(100), t0),
			sample(collector.Asset{Site: "Emmeloord Noord", Area: "hal,2", Line: "a=b", Machine: `DMG "Mori"`}, "cnc 5-axis",
				"alarm_text", collector.String(`door "B" open, C:\temp`+"\nsecond line\ttab"), t0),
			sample(mill1, "cnc", "program", collector.String("O1234 (ROUGH=1)"), t0.Add(time.Millisecond)),
			sample(mill1, "cnc", "ünïcode_sïgnal", collector.String("µm ✓"), t0.Add(2*time.Millisecond)),
		}},
		{"kinds", []collector.Sample{
			sample(mill1, "cnc", "float", collector.Float(3.25), t0),
			sample(mill1, "cnc", "float_whole", collector.Float(3), t0),
			sample(mill1, "cnc", "float_tiny", collector.Float(-1.5e-300), t0),
			sample(mill1, "cnc", "int", collector.Int(-7), t0),
			sample(mill1, "cnc", "int_max", collector.Int(math.MaxInt64), t0),
			sample(mill1, "cnc", "bool_true", collector.Bool(true), t0),
			sample(mill1, "cnc", "bool_false", collector.Bool(false), t0),
			sample(mill1, "cnc", "string", collector.String("running"), t0),
			sample(mill1, "cnc", "string_empty", collector.String(""), t0),
		}},
		{"quality", []collector.Sample{
			withQuality(sample(mill1, "cnc", "temperature_c", collector.Float(61.5), t0), collector.QualityUncertain),
			withQuality(sample(mill1, "cnc", "spindle_load_pct", collector.Value{}, t0), collector.QualityBad),
			sample(mill1, "cnc", "feed_rate_mm_min", collector.Value{}, t0), // good and empty: nothing
			withQuality(sample(mill1, "cnc", "state", collector.String("alarm"), t0), collector.QualityBad),
			sample(mill1, "cnc", "power_w", collector.Float(900), t0),
			// A point that only says "nothing here is good".
			withQuality(sample(mill1, "cnc", "energy_wh", collector.Value{}, t0.Add(time.Second)), collector.QualityUncertain),
			// A good empty sample alone produces no line at all.
			sample(mill1, "cnc", "energy_wh", collector.Value{}, t0.Add(2*time.Second)),
		}},
		{"skipped", []collector.Sample{
			sample(mill1, "cnc", "", collector.Float(1), t0),
			sample(mill1, "cnc", "nan", collector.Float(math.NaN()), t0),
			sample(mill1, "cnc", "inf", collector.Float(math.Inf(-1)), t0),
			sample(mill1, "cnc", "bad_utf8", collector.String("a\xffb"), t0),
			sample(mill1, "cnc", "ctrl\x01name", collector.Float(1), t0),
			sample(mill1, "cnc", `trailing\`, collector.Float(1), t0),
			sample(mill1, "cnc", "time", collector.Float(1), t0),
			sample(mill1, "cnc", "ok", collector.Float(1), t0), // the one survivor of its line
			sample(collector.Asset{Machine: "bad\ntag"}, "cnc", "power_w", collector.Float(1), t0),
			{Asset: mill1, Signal: "no_time", Value: collector.Float(1)},
			sample(mill1, "cnc", "far_future", collector.Float(1), time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)),
			sample(mill1, "cnc", "all_bad", collector.Float(math.NaN()), t0.Add(time.Second)),
		}},
		{"kpi_rows", []collector.Sample{
			// Derived samples go to the kpi measurement with a window tag;
			// machine samples at the same time stay apart.
			{Asset: mill1, MachineType: "cnc", Signal: "oee", Value: collector.Float(0.61), SourceTime: t0, Window: "1h"},
			{Asset: mill1, MachineType: "cnc", Signal: "good", Value: collector.Int(57), SourceTime: t0, Window: "1h"},
			{Asset: mill1, MachineType: "cnc", Signal: "oee", Value: collector.Float(0.58), SourceTime: t0, Window: "shift"},
			sample(mill1, "cnc", "power_w", collector.Float(900), t0),
			{Asset: collector.Asset{Site: "emmeloord", Line: "l1"}, Signal: "oee", Value: collector.Float(0.6), SourceTime: t0, Window: "1h"},
		}},
		{"receive_time_fallback", []collector.Sample{
			{Asset: mill1, MachineType: "cnc", Signal: "power_w", Value: collector.Float(5), ReceiveTime: t0},
			{Asset: mill1, MachineType: "cnc", Signal: "energy_wh", Value: collector.Float(6), ReceiveTime: t0},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, lines, err := AppendLines(nil, "machine", tc.samples)
			got := renderGolden(out, lines, err)
			checkDecodes(t, out, lines)
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("output differs from %s (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
			}
		})
	}
}

// renderGolden is the encoded lines followed by comment lines with the
// count and the error, so a golden file is still valid line protocol.
func renderGolden(out []byte, lines int, err error) []byte {
	var b bytes.Buffer
	b.Write(out)
	fmt.Fprintf(&b, "# lines: %d\n", lines)
	var ee *EncodeError
	if errors.As(err, &ee) {
		for _, s := range ee.Skipped {
			fmt.Fprintf(&b, "# skipped #%d %q: %s\n", s.Index, s.Signal, s.Reason)
		}
	}
	if err != nil {
		fmt.Fprintf(&b, "# error: %v\n", err)
	}
	return b.Bytes()
}

// checkDecodes parses the output with the reference decoder, so a golden
// file cannot bless invalid line protocol.
func checkDecodes(t *testing.T, out []byte, lines int) {
	t.Helper()
	dec := lineprotocol.NewDecoderWithBytes(out)
	n := 0
	for dec.Next() {
		if _, err := dec.Measurement(); err != nil {
			t.Fatalf("line %d: %v", n+1, err)
		}
		for {
			k, _, err := dec.NextTag()
			if err != nil {
				t.Fatalf("line %d: %v", n+1, err)
			}
			if k == nil {
				break
			}
		}
		for {
			k, _, err := dec.NextField()
			if err != nil {
				t.Fatalf("line %d: %v", n+1, err)
			}
			if k == nil {
				break
			}
		}
		if _, err := dec.Time(lineprotocol.Nanosecond, time.Time{}); err != nil {
			t.Fatalf("line %d: %v", n+1, err)
		}
		n++
	}
	if n != lines {
		t.Errorf("decoded %d lines, AppendLines said %d", n, lines)
	}
}

func TestAppendLinesContract(t *testing.T) {
	t.Run("appends to dst", func(t *testing.T) {
		dst := []byte("prefix\n")
		out, n, err := AppendLines(dst, "machine", []collector.Sample{sample(mill1, "cnc", "x", collector.Int(1), t0)})
		if err != nil || n != 1 {
			t.Fatalf("n=%d err=%v", n, err)
		}
		want := "prefix\nmachine,area=machining,line=l1,machine=mill-1,machine_type=cnc,site=emmeloord x=1i 1709649000123456789\n"
		if string(out) != want {
			t.Errorf("got %q\nwant %q", out, want)
		}
	})
	t.Run("invalid measurement", func(t *testing.T) {
		out, n, err := AppendLines(nil, "bad\nname", []collector.Sample{sample(mill1, "cnc", "x", collector.Int(1), t0)})
		if err == nil || n != 0 || len(out) != 0 {
			t.Errorf("got %q, %d, %v; want nothing and an error", out, n, err)
		}
	})
	t.Run("skipped samples are listed", func(t *testing.T) {
		_, n, err := AppendLines(nil, "machine", []collector.Sample{
			sample(mill1, "cnc", "ok", collector.Int(1), t0),
			sample(mill1, "cnc", "nan", collector.Float(math.NaN()), t0),
		})
		var ee *EncodeError
		if !errors.As(err, &ee) || n != 1 {
			t.Fatalf("n=%d err=%v; want 1 line and an *EncodeError", n, err)
		}
		if len(ee.Skipped) != 1 || ee.Skipped[0].Index != 1 || ee.Skipped[0].Signal != "nan" {
			t.Errorf("skipped = %+v", ee.Skipped)
		}
	})
	t.Run("empty input", func(t *testing.T) {
		out, n, err := AppendLines(nil, "machine", nil)
		if err != nil || n != 0 || len(out) != 0 {
			t.Errorf("got %q, %d, %v", out, n, err)
		}
	})
}

// benchSamples is 1,000 points of a CNC with six signals each, the shape
// of a busy edge agent's batch.
func benchSamples() []collector.Sample {
	signals := []string{"spindle_speed_rpm", "spindle_load_pct", "feed_rate_mm_min", "power_w", "part_count_good", "state"}
	out := make([]collector.Sample, 0, 6000)
	for p := 0; p < 1000; p++ {
		ts := t0.Add(time.Duration(p) * 100 * time.Millisecond)
		for i, sig := range signals {
			var v collector.Value
			switch i {
			case 4:
				v = collector.Int(int64(p))
			case 5:
				v = collector.String("running")
			default:
				v = collector.Float(float64(p) * 1.25)
			}
			out = append(out, sample(mill1, "cnc", sig, v, ts))
		}
	}
	return out
}

func BenchmarkAppendLines(b *testing.B) {
	samples := benchSamples()
	var buf []byte
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		var n int
		var err error
		buf, n, err = AppendLines(buf[:0], "machine", samples)
		if err != nil || n != 1000 {
			b.Fatalf("n=%d err=%v", n, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/point")
	b.SetBytes(int64(len(buf)))
}

// FuzzLinesMatchLibrary checks the hand-written encoder against
// lineprotocol.Encoder, the reference: for any sample AppendLines accepts,
// both write the same bytes; any sample it refuses, the library would
// refuse too (or write something InfluxDB cannot take back unchanged).
func FuzzLinesMatchLibrary(f *testing.F) {
	f.Add("machine", "emmeloord", "l 1,=x", "mill-1", "cnc", "", "spindle speed", uint8(1), 1234.5, int64(-3), "", uint8(0), int64(1709649000123456789))
	f.Add("machine", "", "", "mill-1", "", "", "program", uint8(4), 0.0, int64(0), "run \"ning\"\\\n\r\t", uint8(1), int64(1709649000123456789))
	f.Add("kpi", "", "", "m", "", "1h", "oee", uint8(2), 0.0, int64(42), "", uint8(1), int64(0))
	f.Add("a,b c", "s=1", "", "m\\x", "t", "", "x=y", uint8(4), math.Inf(1), int64(0), "ü", uint8(2), int64(-1))
	f.Fuzz(func(t *testing.T, measurement, site, line, machine, typ, window, signal string, kind uint8, fv float64, iv int64, sv string, quality uint8, ns int64) {
		s := collector.Sample{Asset: collector.Asset{Site: site, Line: line, Machine: machine}, MachineType: typ,
			Signal: signal, Quality: collector.Quality(quality % 3), SourceTime: time.Unix(0, ns), Window: window}
		switch kind % 5 {
		case 1:
			s.Value = collector.Float(fv)
		case 2:
			s.Value = collector.Int(iv)
		case 3:
			s.Value = collector.Bool(iv%2 == 0)
		case 4:
			s.Value = collector.String(sv)
		}
		got, n, err := AppendLines(nil, measurement, []collector.Sample{s})
		if err != nil {
			return // refused; the contract test covers the reasons
		}
		var e lineprotocol.Encoder
		e.SetPrecision(lineprotocol.Nanosecond)
		meas := measurement
		if window != "" {
			meas = DefaultKPIMeasurement
		}
		e.StartLine(meas)
		for _, tag := range [][2]string{{"area", ""}, {"line", line}, {"machine", machine}, {"machine_type", typ}, {"site", site}, {"window", window}} {
			if tag[1] != "" {
				e.AddTag(tag[0], tag[1])
			}
		}
		fields := 0
		if s.Value.Kind() != collector.KindNone {
			var v lineprotocol.Value
			switch s.Value.Kind() {
			case collector.KindFloat:
				v, _ = lineprotocol.FloatValue(fv)
			case collector.KindInt:
				v = lineprotocol.IntValue(iv)
			case collector.KindBool:
				v = lineprotocol.BoolValue(iv%2 == 0)
			case collector.KindString:
				v, _ = lineprotocol.StringValue(sv)
			}
			e.AddField(signal, v)
			fields++
		}
		if s.Quality != collector.QualityGood {
			q, _ := lineprotocol.StringValue(s.Quality.String())
			e.AddField(signal+"_quality", q)
			fields++
		}
		if fields == 0 {
			if n != 0 || len(got) != 0 {
				t.Fatalf("no fields, but wrote %q", got)
			}
			return
		}
		e.EndLine(s.SourceTime)
		if e.Err() != nil {
			t.Fatalf("we wrote %q, the library refuses the sample: %v", got, e.Err())
		}
		if want := e.Bytes(); !bytes.Equal(got, want) {
			t.Fatalf("encoder differs from lineprotocol.Encoder:\n got %q\nwant %q", got, want)
		}
	})
}
