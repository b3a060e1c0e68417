package collector

import (
	"math"
	"strings"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

func TestUnitConversions(t *testing.T) {
	tests := []struct {
		from, to string
		in, want float64
	}{
		{"kW", "W", 1.5, 1500},
		{"°F", "°C", 212, 100},
		{"degF", "°C", 32, 0},
		{"K", "°C", 273.15, 0},
		{"rev/s", "rpm", 2, 120},
		{"rad/s", "rpm", 2 * math.Pi, 60},
		{"kWh", "Wh", 2, 2000},
		{"kJ", "Wh", 3.6, 1},
		{"m/min", "mm/min", 1, 1000},
		{"mm/s", "mm/min", 1, 60},
		{"ratio", "%", 0.42, 42},
		{"ms", "s", 1500, 1.5},
		{"W", "W", 7, 7},
		{"MW", "kW", 1.5, 1500},
		{"mW", "W", 1500, 1.5},
		{"MWh", "kWh", 2, 2000},
		{"mWh", "Wh", 2000, 2},
	}
	for _, tt := range tests {
		c, err := NewUnitConversion(tt.from, tt.to)
		if err != nil {
			t.Fatalf("%s->%s: %v", tt.from, tt.to, err)
		}
		if got := c.Apply(tt.in); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%v %s in %s = %v, want %v", tt.in, tt.from, tt.to, got, tt.want)
		}
	}
	for _, bad := range [][2]string{{"kW", "°C"}, {"furlong", "mm"}, {"W", "parsec"}, {"mw", "W"}} {
		if _, err := NewUnitConversion(bad[0], bad[1]); err == nil {
			t.Errorf("%s->%s: want an error", bad[0], bad[1])
		}
	}
}

func TestSanitizeName(t *testing.T) {
	for in, want := range map[string]string{
		"spindle_speed":     "spindle_speed",
		"Axis.X Load(%)":    "axis_x_load",
		"__weird--name__":   "weird_name",
		"Temp°C":            "temp_c",
		"":                  "unnamed",
		"joint.torques.0":   "joint_torques_0",
		"ÄÖÜ":               "unnamed",
		"already_ok_123":    "already_ok_123",
		"Spindle.Speed.RPM": "spindle_speed_rpm",
	} {
		if got := SanitizeName(in); got != want {
			t.Errorf("SanitizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNormalize(t *testing.T) {
	ts := time.Unix(1700000000, 0)
	raw := func(name string, v Value) Sample {
		return Sample{Signal: name, Value: v, SourceTime: ts, ReceiveTime: ts}
	}
	cfg := NormalizeConfig{
		Asset: AssetRule{Site: "plant-1", MachineType: "cnc",
			FromOrigin: []string{"factory/{line}/{machine}/telemetry", "robots/{machine}/#"},
			FromFields: map[string]string{"area": "hall"}},
		Mapping: []MappingRule{
			{Match: "spindle_speed", Signal: SignalSpindleSpeed},
			{Match: "spindle_rps", Signal: SignalSpindleSpeed, Unit: "rev/s"},
			{Match: "temperature", Signal: SignalTemperature, Unit: "°F"},
			{Match: "power", Signal: SignalPower, Unit: "kW"},
			{Match: "raw_load", Signal: SignalSpindleLoad, Scale: ptr(0.1), Offset: 1},
			{Match: "part_count", Signal: SignalPartCountGood},
			{Match: "mode", Signal: SignalState, States: map[string]string{"1": StateRunning, "2": StateIdle, "AUTO": StateRunning}},
			{Match: "debug.*", Drop: true},
			{Match: "torque.*", Signal: ""},
		},
	}
	n, err := NewNormalizer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		origin   string
		in       []Sample
		want     []Sample // only Asset, MachineType, Signal, Value, Unit compared
		problems []string
	}{
		{
			name:   "source's own unit converted to the canonical one",
			origin: "factory/l/m/telemetry",
			in:     []Sample{{Signal: "power_w", Value: Float(1.5), Unit: "kW", SourceTime: ts}, {Signal: "temperature_c", Value: Float(212), Unit: "degF", SourceTime: ts}},
			want:   []Sample{{Signal: SignalPower, Value: Float(1500), Unit: "W"}, {Signal: SignalTemperature, Value: Float(100), Unit: "°C"}},
		},
		{
			name:   "a rule's unit wins over the source's",
			origin: "factory/l/m/telemetry",
			in:     []Sample{{Signal: "power", Value: Float(2), Unit: "W", SourceTime: ts}},
			want:   []Sample{{Signal: SignalPower, Value: Float(2000), Unit: "W"}},
		},
		{
			name:     "an unknown source unit is refused, not stored unconverted",
			origin:   "factory/l/m/telemetry",
			in:       []Sample{{Signal: "power_w", Value: Float(7), Unit: "horsepower", SourceTime: ts}},
			problems: []string{"unknown_unit"},
		},
		{
			name:   "rename and asset from topic",
			origin: "factory/line-2/cnc-007/telemetry",
			in:     []Sample{raw("spindle_speed", Float(12000))},
			want:   []Sample{{Asset: Asset{Site: "plant-1", Line: "line-2", Machine: "cnc-007"}, MachineType: "cnc", Signal: SignalSpindleSpeed, Value: Float(12000), Unit: "rpm"}},
		},
		{
			name:   "unit conversions",
			origin: "factory/l/m/telemetry",
			in:     []Sample{raw("spindle_rps", Float(200)), raw("temperature", Float(212)), raw("power", Float(2.5))},
			want: []Sample{
				{Signal: SignalSpindleSpeed, Value: Float(12000), Unit: "rpm"},
				{Signal: SignalTemperature, Value: Float(100), Unit: "°C"},
				{Signal: SignalPower, Value: Float(2500), Unit: "W"},
			},
		},
		{
			name:   "scale offset and int coercion",
			origin: "factory/l/m/telemetry",
			in:     []Sample{raw("raw_load", Float(415)), raw("part_count", Float(1234))},
			want:   []Sample{{Signal: SignalSpindleLoad, Value: Float(42.5), Unit: "%"}, {Signal: SignalPartCountGood, Value: Int(1234)}},
		},
		{
			name:   "enum to state, numbers and words",
			origin: "factory/l/m/telemetry",
			in:     []Sample{raw("mode", Float(2)), raw("mode", String("AUTO")), raw("state", String("Running"))},
			want:   []Sample{{Signal: SignalState, Value: String(StateIdle)}, {Signal: SignalState, Value: String(StateRunning)}, {Signal: SignalState, Value: String(StateRunning)}},
		},
		{
			name:   "pass-through sanitised, drop rule, asset from field",
			origin: "robots/r-1/data/extra",
			in:     []Sample{raw("Coolant.Level (%)", Float(80)), raw("debug.trace", String("x")), raw("hall", String("B")), raw("torque.3", Float(5))},
			want: []Sample{
				{Asset: Asset{Site: "plant-1", Area: "B", Machine: "r-1"}, MachineType: "cnc", Signal: "coolant_level", Value: Float(80)},
				{Asset: Asset{Site: "plant-1", Area: "B", Machine: "r-1"}, MachineType: "cnc", Signal: "torque_3", Value: Float(5)},
			},
		},
		{
			name:     "bad values are refused one by one",
			origin:   "factory/l/m/telemetry",
			in:       []Sample{raw("spindle_speed", String("fast")), raw("part_count", Float(1.5)), raw("temperature", Float(math.NaN())), raw("state", String("dancing")), raw("power", Float(1))},
			want:     []Sample{{Signal: SignalPower, Value: Float(1000), Unit: "W"}},
			problems: []string{"wrong_type", "wrong_type", "non_finite", "unknown_state"},
		},
		{
			name:   "numeric strings are numbers",
			origin: "factory/l/m/telemetry",
			in:     []Sample{raw("spindle_speed", String(" 1500.5 "))},
			want:   []Sample{{Signal: SignalSpindleSpeed, Value: Float(1500.5), Unit: "rpm"}},
		},
		{
			name:     "bad quality keeps its place without a value",
			origin:   "factory/l/m/telemetry",
			in:       []Sample{{Signal: "spindle_speed", Value: String("###"), Quality: QualityBad, SourceTime: ts}},
			want:     []Sample{{Signal: SignalSpindleSpeed, Value: Value{}, Unit: "rpm", Quality: QualityBad}},
			problems: []string{"wrong_type"},
		},
		{
			name:     "unmatched origin without a machine is refused",
			origin:   "elsewhere/x",
			in:       []Sample{raw("spindle_speed", Float(1))},
			problems: []string{"no_machine"},
		},
		{
			name:   "unmatched origin keeps fixed asset and sample's own machine",
			origin: "elsewhere/x",
			in:     []Sample{{Asset: Asset{Machine: "m1"}, Signal: "spindle_speed", Value: Float(1), SourceTime: ts}},
			want:   []Sample{{Asset: Asset{Site: "plant-1", Machine: "m1"}, MachineType: "cnc", Signal: SignalSpindleSpeed, Value: Float(1), Unit: "rpm"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, problems := n.Normalize(Batch{Origin: tt.origin, Samples: tt.in}, nil, nil)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d samples %+v, want %d", len(got), got, len(tt.want))
			}
			for i, w := range tt.want {
				g := got[i]
				if w.Asset != (Asset{}) && g.Asset != w.Asset {
					t.Errorf("[%d] asset %+v, want %+v", i, g.Asset, w.Asset)
				}
				if w.MachineType != "" && g.MachineType != w.MachineType {
					t.Errorf("[%d] machine type %q, want %q", i, g.MachineType, w.MachineType)
				}
				if g.Signal != w.Signal || g.Value.Kind() != w.Value.Kind() || g.Value.Format() != w.Value.Format() || g.Unit != w.Unit || g.Quality != w.Quality {
					t.Errorf("[%d] got %s=%#v %q %s, want %s=%#v %q %s", i, g.Signal, g.Value, g.Unit, g.Quality, w.Signal, w.Value, w.Unit, w.Quality)
				}
				if g.SourceTime != ts && g.Quality == QualityGood {
					t.Errorf("[%d] source time changed to %v", i, g.SourceTime)
				}
			}
			if len(problems) != len(tt.problems) {
				t.Fatalf("problems %+v, want reasons %v", problems, tt.problems)
			}
			for i, r := range tt.problems {
				if problems[i].Reason != r {
					t.Errorf("problem %d reason %q, want %q (%v)", i, problems[i].Reason, r, problems[i].Err)
				}
			}
		})
	}
}

func TestDeadband(t *testing.T) {
	n, err := NewNormalizer(NormalizeConfig{Asset: AssetRule{Machine: "m1"}, Mapping: []MappingRule{{Match: "t", Signal: SignalTemperature, Deadband: 0.5}}})
	if err != nil {
		t.Fatal(err)
	}
	var kept []float64
	for _, v := range []float64{20, 20.2, 20.4, 20.6, 20.7, 19.9, 19.5} {
		out, _ := n.Normalize(Batch{Origin: "a", Samples: []Sample{{Signal: "t", Value: Float(v)}}}, nil, nil)
		for _, s := range out {
			f, _ := s.Value.AsFloat()
			kept = append(kept, f)
		}
	}
	want := []float64{20, 20.6, 19.9}
	if len(kept) != len(want) {
		t.Fatalf("kept %v, want %v", kept, want)
	}
	for i := range want {
		if kept[i] != want[i] {
			t.Fatalf("kept %v, want %v", kept, want)
		}
	}
}

func TestTemplateMatch(t *testing.T) {
	tests := []struct {
		tmpl, origin string
		ok           bool
		want         Asset
	}{
		{"factory/{line}/{machine}/telemetry", "factory/l1/m1/telemetry", true, Asset{Line: "l1", Machine: "m1"}},
		{"factory/{line}/{machine}/telemetry", "factory/l1/m1", false, Asset{}},
		{"factory/{line}/{machine}/telemetry", "factory/l1/m1/telemetry/x", false, Asset{}},
		{"factory/{line}/{machine}/telemetry", "plant/l1/m1/telemetry", false, Asset{}},
		{"{site}/+/{machine}/#", "s/x/m", true, Asset{Site: "s", Machine: "m"}},
		{"{site}/+/{machine}/#", "s/x/m/a/b/c", true, Asset{Site: "s", Machine: "m"}},
		{"{site}/+/{machine}/#", "s/x", false, Asset{}},
		{"a/{machine}", "a/", true, Asset{}},
	}
	for _, tt := range tests {
		tp, err := compileTemplate(tt.tmpl)
		if err != nil {
			t.Fatal(err)
		}
		var a Asset
		var mt string
		if ok := tp.match(tt.origin, &a, &mt); ok != tt.ok || (ok && a != tt.want) {
			t.Errorf("%q ~ %q = %v %+v, want %v %+v", tt.tmpl, tt.origin, ok, a, tt.ok, tt.want)
		}
	}
	for _, bad := range []string{"", "a/#/b", "a/{plant}/b", "a/x{line}/b"} {
		if _, err := compileTemplate(bad); err == nil {
			t.Errorf("template %q: want an error", bad)
		}
	}
}

func TestMappingRuleValidate(t *testing.T) {
	err := NormalizeConfig{Mapping: []MappingRule{
		{Signal: "x"},
		{Match: "[", Signal: "Bad Name"},
		{Match: "p", Signal: SignalPower, Unit: "°C"},
		{Match: "s", Signal: SignalState, States: map[string]string{"1": "on"}},
	}, Asset: AssetRule{FromOrigin: []string{"a/{plant}"}, FromFields: map[string]string{"room": "r"}}}.Validate()
	if err == nil {
		t.Fatal("want errors")
	}
	msg := err.Error()
	for _, want := range []string{"asset.from_origin[0]", "asset.from_fields.room", "mapping[0].match: is required", "mapping[1].match", "mapping[1].signal", "mapping[2].unit: cannot convert", "mapping[3].states.1"} {
		if !strings.Contains(msg, want) {
			t.Errorf("errors %q lack %q", msg, want)
		}
	}
}

// BenchmarkNormalize is the mapping step for one message of the example's
// shape: seven signals, asset from the topic, renames and a state.
func BenchmarkNormalize(b *testing.B) {
	n, err := NewNormalizer(NormalizeConfig{
		Asset: AssetRule{Site: "plant", MachineType: "cnc", FromOrigin: []string{"factory/{line}/{machine}/telemetry"}},
		Mapping: []MappingRule{
			{Match: "spindle_speed", Signal: SignalSpindleSpeed}, {Match: "spindle_load", Signal: SignalSpindleLoad},
			{Match: "part_count", Signal: SignalPartCountGood}, {Match: "temperature", Signal: SignalTemperature},
			{Match: "power_w", Signal: SignalPower}, {Match: "program", Signal: SignalProgram}, {Match: "state", Signal: SignalState},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	ts := time.Now()
	in := []Sample{
		{Signal: "state", Value: String("running"), SourceTime: ts}, {Signal: "spindle_speed", Value: Float(12000), SourceTime: ts},
		{Signal: "spindle_load", Value: Float(41.5), SourceTime: ts}, {Signal: "part_count", Value: Float(1834), SourceTime: ts},
		{Signal: "temperature", Value: Float(36.2), SourceTime: ts}, {Signal: "power_w", Value: Float(5400), SourceTime: ts},
		{Signal: "program", Value: String("O1234"), SourceTime: ts},
	}
	var out []Sample
	var problems []Problem
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		out, problems = n.Normalize(Batch{Origin: "factory/line-1/cnc-07/telemetry", Samples: in}, out[:0], problems[:0])
	}
	if len(out) != 7 || len(problems) != 0 {
		b.Fatalf("%d samples, %v", len(out), problems)
	}
}
