package live

import (
	"fmt"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
)

func TestObserve(t *testing.T) {
	v := New()
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	a := collector.Asset{Site: "p", Line: "l1", Machine: "cnc-1"}
	state := func(at time.Time, s string, q collector.Quality) collector.Sample {
		return collector.Sample{Asset: a, MachineType: "cnc", Signal: collector.SignalState, Value: collector.String(s), Quality: q, SourceTime: at}
	}
	v.Observe("src", []collector.Sample{state(t0, "running", 0), {Asset: a, Signal: collector.SignalSpindleSpeed, Value: collector.Float(12000), Unit: "rpm", SourceTime: t0}})
	v.Observe("src", []collector.Sample{state(t0.Add(time.Minute), "running", 0)}) // no change
	v.Observe("src", []collector.Sample{state(t0.Add(2*time.Minute), "alarm", 0)})
	v.Observe("src", []collector.Sample{{Asset: a, Signal: collector.SignalSpindleSpeed, Value: collector.Float(1), SourceTime: t0.Add(-time.Hour)}}) // late
	v.Observe("src", []collector.Sample{state(t0.Add(3*time.Minute), "alarm", collector.QualityBad)})
	v.Observe("src", []collector.Sample{{Asset: collector.Asset{Line: "l1"}, Signal: "oee", Value: collector.Float(0.5), Window: "1h"}}) // a KPI row: ignored

	ms := v.Machines()
	if len(ms) != 1 {
		t.Fatalf("%d machines, want 1", len(ms))
	}
	m := ms[0]
	if got := fmt.Sprint(m.States); got != fmt.Sprint([]StateChange{{"running", t0}, {"alarm", t0.Add(2 * time.Minute)}, {"offline", t0.Add(3 * time.Minute)}}) {
		t.Errorf("states %v", got)
	}
	if sp := m.Values[collector.SignalSpindleSpeed]; sp.Value.Format() != "12000" || sp.Unit != "rpm" {
		t.Errorf("spindle speed %+v: a late sample must not replace the last", sp)
	}
	if m.MachineType != "cnc" || m.Source != "src" {
		t.Errorf("machine %+v", m)
	}
}

func TestBounded(t *testing.T) {
	v := New()
	a := collector.Asset{Machine: "m"}
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	for i := 0; i < 5000; i++ {
		st := []string{"running", "idle"}[i%2]
		v.Observe("s", []collector.Sample{
			{Asset: a, Signal: collector.SignalState, Value: collector.String(st), SourceTime: t0.Add(time.Duration(i) * time.Second)},
			{Asset: a, Signal: fmt.Sprintf("sig_%d", i), Value: collector.Float(1), SourceTime: t0},
		})
	}
	m := v.Machines()[0]
	if len(m.States) > maxStateChanges || len(m.Values) > maxSignals {
		t.Errorf("%d state changes and %d signals kept, want at most %d and %d", len(m.States), len(m.Values), maxStateChanges, maxSignals)
	}
}
