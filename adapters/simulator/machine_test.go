package simulator

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

func run(m *Machine, steps int, every time.Duration) []Values {
	out := make([]Values, 0, steps)
	for i := 1; i <= steps; i++ {
		out = append(out, m.Advance(t0.Add(time.Duration(i)*every)))
	}
	return out
}

func TestDeterministicForASeed(t *testing.T) {
	for _, kind := range []Kind{KindCNC, KindRobot} {
		a := run(NewMachine("m", kind, 42, t0), 3600, 5*time.Second)
		b := run(NewMachine("m", kind, 42, t0), 3600, 5*time.Second)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%s: two runs with seed 42 differ", kind)
		}
		c := run(NewMachine("m", kind, 43, t0), 3600, 5*time.Second)
		if reflect.DeepEqual(a, c) {
			t.Fatalf("%s: seeds 42 and 43 give the same run", kind)
		}
	}
}

// TestConsistency runs machines for simulated days and checks what a real
// machine could never do.
func TestConsistency(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		for _, kind := range []Kind{KindCNC, KindRobot} {
			m := NewMachine("m", kind, seed, t0)
			prev := m.Advance(t0)
			states := map[string]int{}
			for i := 1; i <= 2*24*3600; i++ { // two days, one-second steps
				v := m.Advance(t0.Add(time.Duration(i) * time.Second))
				states[v.State]++
				if v.EnergyTotal < prev.EnergyTotal {
					t.Fatalf("seed %d %s: energy fell from %v to %v", seed, kind, prev.EnergyTotal, v.EnergyTotal)
				}
				if want := v.PowerActive / 3600; v.EnergyTotal-prev.EnergyTotal > want*1.0001+1e-9 || v.EnergyTotal-prev.EnergyTotal < want*0.9999-1e-9 {
					t.Fatalf("seed %d %s: energy rose %v Wh in a second at %v W", seed, kind, v.EnergyTotal-prev.EnergyTotal, v.PowerActive)
				}
				// Counters only count up; each completed cycle makes one
				// part, good or reject, so rejects come only with a cycle;
				// a robot makes no rejects; a cycle takes far more than a
				// second, and parts are made only while running.
				if v.PartCountGood < prev.PartCountGood || v.PartCountReject < prev.PartCountReject || v.CycleCount < prev.CycleCount {
					t.Fatalf("seed %d %s: a counter fell: good %d→%d, rejects %d→%d, cycles %d→%d", seed, kind,
						prev.PartCountGood, v.PartCountGood, prev.PartCountReject, v.PartCountReject, prev.CycleCount, v.CycleCount)
				}
				if v.PartCountGood+v.PartCountReject != v.CycleCount {
					t.Fatalf("seed %d %s: %d good and %d rejects after %d cycles", seed, kind, v.PartCountGood, v.PartCountReject, v.CycleCount)
				}
				if kind == KindRobot && v.PartCountReject != 0 {
					t.Fatalf("seed %d robot: %d rejects", seed, v.PartCountReject)
				}
				made := v.CycleCount - prev.CycleCount
				if made > 1 || made > 0 && v.State != "running" && prev.State != "running" {
					t.Fatalf("seed %d %s: %d parts made in a second while %s", seed, kind, made, v.State)
				}
				if kind == KindCNC && v.State != "running" && v.SpindleSpeed != 0 {
					t.Fatalf("seed %d: spindle turning while %s", seed, v.State)
				}
				if (v.State == "alarm") != (v.AlarmCode != "") {
					t.Fatalf("seed %d %s: state %s with alarm code %q", seed, kind, v.State, v.AlarmCode)
				}
				prev = v
			}
			if states["running"] < 3600 || states["idle"] == 0 || states["alarm"] == 0 {
				t.Errorf("seed %d %s: states %v; want mostly running with idles and alarms", seed, kind, states)
			}
			if prev.PartCountGood == 0 {
				t.Errorf("seed %d %s: no parts in two days", seed, kind)
			}
			// The model rejects about 3 % of a CNC's parts: some, but
			// far fewer than the good ones.
			if kind == KindCNC && (prev.PartCountReject == 0 || prev.PartCountReject*10 > prev.CycleCount) {
				t.Errorf("seed %d cnc: %d rejects of %d parts in two days; want some, under 10 %%", seed, prev.PartCountReject, prev.CycleCount)
			}
		}
	}
}

func TestJSONIsValid(t *testing.T) {
	for _, kind := range []Kind{KindCNC, KindRobot} {
		v := NewMachine("m", kind, 1, t0).Advance(t0.Add(time.Hour))
		var got map[string]any
		if err := json.Unmarshal(v.JSON(kind), &got); err != nil {
			t.Fatalf("%s: %v\n%s", kind, err, v.JSON(kind))
		}
		if got["state"] != v.State || got["ts"].(float64) != float64(v.Time.UnixMilli()) {
			t.Errorf("%s: payload %v does not carry the state and time", kind, got)
		}
	}
}
