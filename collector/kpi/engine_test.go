package kpi

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
)

// rows keeps the last value of every KPI field per row, as InfluxDB does
// with rows rewritten at the same timestamp.
type rows map[string]map[string]collector.Value

func rowKey(a collector.Asset, window string, start time.Time) string {
	return fmt.Sprintf("%s/%s/%s|%s|%s", a.Site, a.Line, a.Machine, window, start.UTC().Format(time.RFC3339))
}

func (r rows) get(t *testing.T, a collector.Asset, window string, start time.Time) map[string]collector.Value {
	t.Helper()
	row, ok := r[rowKey(a, window, start)]
	if !ok {
		t.Fatalf("no %s row for %+v at %s", window, a, start.UTC().Format(time.RFC3339))
	}
	return row
}

func num(v collector.Value) float64 {
	f, _ := v.AsFloat()
	return f
}

type harness struct {
	t    *testing.T
	e    *Engine
	rows rows
	a    collector.Asset
}

func newHarness(t *testing.T, cfg Config, stateDir string) *harness {
	t.Helper()
	cfg.Enabled = true
	h := &harness{t: t, rows: rows{}, a: collector.Asset{Site: "plant", Line: "line-1", Machine: "cnc-1"}}
	e, err := New(cfg, stateDir, func(out []collector.Sample) error {
		for _, s := range out {
			k := rowKey(s.Asset, s.Window, s.SourceTime)
			if h.rows[k] == nil {
				h.rows[k] = map[string]collector.Value{}
			}
			h.rows[k][s.Signal] = s.Value
		}
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.now = func() time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) }
	h.e = e
	return h
}

func (h *harness) feed(at time.Time, signal string, v collector.Value) {
	h.e.Observe([]collector.Sample{{Asset: h.a, MachineType: "cnc", Signal: signal, Value: v, SourceTime: at}})
}

// finish lets an hour of wall time pass without samples, so the engine
// closes every window the samples reached, as it does for a silent
// machine.
func (h *harness) finish() {
	h.e.now = func() time.Time { return time.Date(2030, 1, 1, 1, 0, 0, 0, time.UTC) }
	h.e.advanceSilent()
}

func (h *harness) state(at time.Time, s string) {
	h.feed(at, collector.SignalState, collector.String(s))
}
func (h *harness) good(at time.Time, n int64) {
	h.feed(at, collector.SignalPartCountGood, collector.Int(n))
}

func at(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04:05", s)
	if err != nil {
		panic(err)
	}
	return t
}

func want(t *testing.T, row map[string]collector.Value, field string, w float64) {
	t.Helper()
	v, ok := row[field]
	if !ok {
		t.Errorf("%s missing from row %v", field, row)
		return
	}
	if got := num(v); math.Abs(got-w) > 1e-9 {
		t.Errorf("%s = %v, want %v", field, got, w)
	}
}

var dayShift = []ShiftConfig{{Name: "early", Start: "06:00", End: "14:00"}}

// runShift: state running from 06:00, one good part every 75 s, and a
// last sample after the shift so the engine knows the shift is over.
func runShift(h *harness, day string) {
	h.state(at(day+" 06:00:00"), "running")
	h.good(at(day+" 06:00:00"), 0)
	for k := 1; k <= 383; k++ {
		h.good(at(day+" 06:00:00").Add(time.Duration(k)*75*time.Second), int64(k))
	}
	h.state(at(day+" 14:00:00"), "running")
	h.state(at(day+" 14:05:00"), "idle")
}

func TestCleanShift(t *testing.T) {
	h := newHarness(t, Config{Shifts: dayShift, IdealCycleTime: time.Minute}, "")
	runShift(h, "2026-11-30")
	row := h.rows.get(t, h.a, WindowShift, at("2026-11-30 06:00:00"))
	want(t, row, "planned_s", 8*3600)
	want(t, row, "run_s", 8*3600)
	want(t, row, "good", 383)
	want(t, row, "availability", 1)
	want(t, row, "performance", 383*60.0/28800) // 0.7979...
	want(t, row, "quality", 1)
	want(t, row, "oee", 383*60.0/28800)
	if s := row["shift"].Str(); s != "early" {
		t.Errorf("shift = %q", s)
	}
	// The hour 07:00-08:00: 48 parts (every 75 s), all time running.
	hour := h.rows.get(t, h.a, WindowHour, at("2026-11-30 07:00:00"))
	want(t, hour, "run_s", 3600)
	want(t, hour, "good", 48)
	want(t, hour, "performance", 48*60.0/3600)
	// Line and site roll-ups of one machine equal the machine.
	line := h.rows.get(t, collector.Asset{Site: "plant", Line: "line-1"}, WindowShift, at("2026-11-30 06:00:00"))
	want(t, line, "oee", 383*60.0/28800)
	site := h.rows.get(t, collector.Asset{Site: "plant"}, WindowDay, at("2026-11-30 00:00:00"))
	want(t, site, "good", 383)
	// After the shift: unplanned, no availability.
	after := h.rows.get(t, h.a, WindowMinute, at("2026-11-30 14:01:00"))
	want(t, after, "unplanned_s", 60)
	if _, ok := after["availability"]; ok {
		t.Error("availability reported for a minute without planned time")
	}
}

func TestBreaksAndPlannedDowntime(t *testing.T) {
	cfg := Config{
		Shifts:          []ShiftConfig{{Name: "early", Start: "06:00", End: "14:00", Breaks: []PeriodOfDay{{Start: "10:00", End: "10:30"}}}},
		PlannedDowntime: []Period{{From: "2026-11-30 12:00", To: "2026-11-30 13:00"}},
		IdealCycleTime:  time.Minute,
	}
	h := newHarness(t, cfg, "")
	for m := 0; m <= 8*60+10; m++ {
		ts := at("2026-11-30 06:00:00").Add(time.Duration(m) * time.Minute)
		switch {
		case m >= 60 && m < 90:
			h.state(ts, "maintenance") // planned downtime by state
		default:
			h.state(ts, "running")
		}
	}
	row := h.rows.get(t, h.a, WindowShift, at("2026-11-30 06:00:00"))
	// 8 h - 30 min break - 1 h planned downtime - 30 min maintenance.
	want(t, row, "planned_s", 6*3600)
	want(t, row, "planned_downtime_s", 1800)
	want(t, row, "unplanned_s", 1800+3600)
	want(t, row, "availability", 1)
}

func TestCounterReset(t *testing.T) {
	h := newHarness(t, Config{Shifts: dayShift, IdealCycleTime: 30 * time.Second}, "")
	h.state(at("2026-11-30 06:00:00"), "running")
	h.good(at("2026-11-30 06:00:00"), 1000)
	h.feed(at("2026-11-30 06:00:00"), collector.SignalPartCountReject, collector.Int(5))
	h.good(at("2026-11-30 06:04:00"), 1010)
	h.state(at("2026-11-30 06:08:00"), "running")
	h.good(at("2026-11-30 06:12:00"), 1030)
	h.state(at("2026-11-30 06:16:00"), "running")
	h.good(at("2026-11-30 06:20:00"), 1045)
	h.state(at("2026-11-30 06:24:00"), "running")
	h.good(at("2026-11-30 06:28:00"), 1060) // 60 parts
	h.state(at("2026-11-30 06:32:00"), "running")
	h.state(at("2026-11-30 06:36:00"), "running")
	h.good(at("2026-11-30 06:40:00"), 0) // controller restarted: counter back to 0
	h.state(at("2026-11-30 06:44:00"), "running")
	h.state(at("2026-11-30 06:48:00"), "running")
	h.feed(at("2026-11-30 06:50:00"), collector.SignalPartCountReject, collector.Int(15)) // 10 rejects
	h.state(at("2026-11-30 06:54:00"), "running")
	h.good(at("2026-11-30 06:59:00"), 30) // 30 more
	h.state(at("2026-11-30 07:02:00"), "running")
	hour := h.rows.get(t, h.a, WindowHour, at("2026-11-30 06:00:00"))
	want(t, hour, "good", 90)
	want(t, hour, "reject", 10)
	want(t, hour, "quality", 0.9)
	want(t, hour, "performance", 100*30.0/3600) // ideal covers rejects too: produced = 100
}

func TestDaylightSavingDays(t *testing.T) {
	for _, tc := range []struct {
		day   string
		hours float64
	}{{"2026-10-25", 25}, {"2026-03-29", 23}, {"2026-06-01", 24}} {
		t.Run(tc.day, func(t *testing.T) {
			h := newHarness(t, Config{TimeZone: "Europe/Amsterdam", Shifts: []ShiftConfig{{Name: "all", Start: "00:00", End: "24:00"}}, IdealCycleTime: time.Minute}, "")
			loc, _ := time.LoadLocation("Europe/Amsterdam")
			d, _ := time.ParseInLocation("2006-01-02", tc.day, loc)
			next := d.AddDate(0, 0, 1)
			for ts := d; ts.Before(next.Add(2 * time.Minute)); ts = ts.Add(3 * time.Minute) {
				h.state(ts, "running")
			}
			h.finish()
			day := h.rows.get(t, h.a, WindowDay, d)
			want(t, day, "planned_s", tc.hours*3600)
			shift := h.rows.get(t, h.a, WindowShift, d)
			want(t, shift, "run_s", tc.hours*3600)
			// Every local hour of the day has its own row of 3600 s, the
			// repeated hour of October included.
			n := 0
			for hr := d; hr.Before(next); hr = hr.Add(time.Hour) {
				want(t, h.rows.get(t, h.a, WindowHour, hr), "run_s", 3600)
				n++
			}
			if float64(n) != tc.hours {
				t.Errorf("%d hours, want %v", n, tc.hours)
			}
		})
	}
}

func TestLateAndOutOfOrderSamples(t *testing.T) {
	h := newHarness(t, Config{Shifts: dayShift, IdealCycleTime: time.Minute, Lateness: 30 * time.Second, MaxGap: 20 * time.Minute}, "")
	h.state(at("2026-11-30 06:00:00"), "running")
	h.state(at("2026-11-30 06:10:20"), "running")
	h.state(at("2026-11-30 06:10:00"), "alarm") // 20 s late: still in time
	h.state(at("2026-11-30 06:15:00"), "running")
	h.state(at("2026-11-30 06:30:00"), "alarm")
	h.state(at("2026-11-30 06:35:00"), "running")
	h.state(at("2026-11-30 06:50:00"), "running")
	h.state(at("2026-11-30 06:20:00"), "alarm") // half an hour late: too late
	h.state(at("2026-11-30 07:01:00"), "running")
	hour := h.rows.get(t, h.a, WindowHour, at("2026-11-30 06:00:00"))
	// Alarm 06:10:00-06:10:20 then running again (the 06:10:20 sample),
	// and 06:30-06:35: 20 s + 300 s.
	want(t, hour, "alarm_s", 320)
	want(t, hour, "run_s", 3600-320)
	want(t, hour, "mtbf_s", (3600-320)/2.0)
	want(t, hour, "mttr_s", 160)
	if n := h.e.TooLate(); n != 1 {
		t.Errorf("too late %d, want 1", n)
	}
}

func TestOfflineGapIsUnknown(t *testing.T) {
	h := newHarness(t, Config{Shifts: dayShift, IdealCycleTime: time.Minute, MaxGap: 5 * time.Minute}, "")
	for m := 0; m <= 120; m++ {
		if m > 60 && m < 80 { // silent 07:01-07:20
			continue
		}
		h.state(at("2026-11-30 06:00:00").Add(time.Duration(m)*time.Minute), "running")
	}
	h.finish()
	hour := h.rows.get(t, h.a, WindowHour, at("2026-11-30 07:00:00"))
	// Last sample 07:00, state assumed until 07:05, unknown until 07:20.
	want(t, hour, "unknown_s", 15*60)
	want(t, hour, "planned_s", 45*60)
	want(t, hour, "availability", 1) // unknown is not a loss
}

func TestProgramChangesIdealCycleTime(t *testing.T) {
	cfg := Config{Shifts: dayShift, IdealCycleTime: time.Minute,
		Machines: map[string]MachineConfig{"cnc-1": {Programs: map[string]time.Duration{"A": 30 * time.Second, "B": 90 * time.Second}}}}
	h := newHarness(t, cfg, "")
	h.state(at("2026-11-30 08:00:00"), "running")
	h.feed(at("2026-11-30 08:00:00"), collector.SignalProgram, collector.String("A"))
	h.good(at("2026-11-30 08:00:00"), 0)
	for k := 1; k <= 60; k++ { // 60 parts of A in 30 minutes
		h.good(at("2026-11-30 08:00:00").Add(time.Duration(k)*30*time.Second), int64(k))
	}
	h.feed(at("2026-11-30 08:30:00"), collector.SignalProgram, collector.String("B"))
	for k := 1; k <= 20; k++ { // 20 parts of B in 30 minutes
		h.good(at("2026-11-30 08:30:00").Add(time.Duration(k)*90*time.Second-45*time.Second), int64(60+k))
	}
	h.state(at("2026-11-30 09:01:00"), "running")
	hour := h.rows.get(t, h.a, WindowHour, at("2026-11-30 08:00:00"))
	// Part 60 of A lands at 08:30:00 exactly, before the program change.
	want(t, hour, "performance", (60*30.0+20*90.0)/3600)
}

// TestRestartMidShift: stopping the engine mid-shift and starting it from
// its saved state gives the same shift KPIs as running through.
func TestRestartMidShift(t *testing.T) {
	straight := newHarness(t, Config{Shifts: dayShift, IdealCycleTime: time.Minute}, "")
	runShift(straight, "2026-11-30")
	want := straight.rows.get(t, straight.a, WindowShift, at("2026-11-30 06:00:00"))

	dir := t.TempDir()
	first := newHarness(t, Config{Shifts: dayShift, IdealCycleTime: time.Minute}, dir)
	day := "2026-11-30"
	first.state(at(day+" 06:00:00"), "running")
	first.good(at(day+" 06:00:00"), 0)
	for k := 1; k <= 200; k++ {
		first.good(at(day+" 06:00:00").Add(time.Duration(k)*75*time.Second), int64(k))
	}
	if err := first.e.Save(); err != nil {
		t.Fatal(err)
	}
	second := newHarness(t, Config{Shifts: dayShift, IdealCycleTime: time.Minute}, dir)
	for k := 201; k <= 383; k++ {
		second.good(at(day+" 06:00:00").Add(time.Duration(k)*75*time.Second), int64(k))
	}
	second.state(at(day+" 14:00:00"), "running")
	second.state(at(day+" 14:05:00"), "idle")
	got := second.rows.get(t, second.a, WindowShift, at(day+" 06:00:00"))
	for f, v := range want {
		if got[f].Format() != v.Format() {
			t.Errorf("%s after a restart = %s, uninterrupted %s", f, got[f].Format(), v.Format())
		}
	}
}

// TestProperties feeds random machines and checks every row: ratios in
// [0, 1] unless flagged, OEE = A x P x Q, and the seconds of a minute add
// up to 60.
func TestProperties(t *testing.T) {
	states := []string{"running", "running", "running", "idle", "setup", "alarm", "maintenance", "offline", "stopped"}
	for seed := uint64(1); seed <= 20; seed++ {
		r := rand.New(rand.NewPCG(seed, 99))
		h := newHarness(t, Config{
			Shifts:         []ShiftConfig{{Name: "a", Start: "06:00", End: "14:00", Breaks: []PeriodOfDay{{Start: "09:00", End: "09:20"}}}, {Name: "b", Start: "14:00", End: "22:00"}},
			IdealCycleTime: time.Duration(20+r.IntN(60)) * time.Second, MaxGap: 3 * time.Minute, Lateness: 10 * time.Second,
		}, "")
		now := at("2026-11-30 05:30:00")
		first := ""
		var count int64
		for now.Before(at("2026-11-30 23:00:00")) {
			now = now.Add(time.Duration(1+r.IntN(400)) * time.Second)
			if first == "" {
				first = now.Truncate(time.Minute).UTC().Format(time.RFC3339)
			}
			switch r.IntN(4) {
			case 0:
				h.state(now, states[r.IntN(len(states))])
			case 1, 2:
				count += int64(r.IntN(3))
				if r.IntN(200) == 0 {
					count = 0
				}
				h.good(now, count)
			case 3:
				h.feed(now.Add(-time.Duration(r.IntN(15))*time.Second), collector.SignalPartCountReject, collector.Int(int64(r.IntN(50))))
			}
		}
		for k, row := range h.rows {
			suspect, _ := row["performance_suspect"].AsBool()
			for _, f := range []string{"availability", "quality", "oee"} {
				if f == "oee" && suspect {
					continue // OEE carries a flagged performance above 1
				}
				if v, ok := row[f]; ok && (num(v) < 0 || num(v) > 1) {
					t.Fatalf("seed %d %s: %s = %v outside [0, 1]", seed, k, f, num(v))
				}
			}
			if v, ok := row["performance"]; ok && (num(v) < 0 || num(v) > 1.0001 && !suspect) {
				t.Fatalf("seed %d %s: performance %v above 1 and not flagged", seed, k, num(v))
			}
			if oee, ok := row["oee"]; ok && row["quality"].Kind() != collector.KindNone {
				if p := num(row["availability"]) * num(row["performance"]) * num(row["quality"]); math.Abs(p-num(oee)) > 1e-9 {
					t.Fatalf("seed %d %s: oee %v != A*P*Q %v", seed, k, num(oee), p)
				}
			}
			sum := 0.0
			for _, f := range []string{"run_s", "idle_s", "setup_s", "alarm_s", "unknown_s", "planned_downtime_s", "unplanned_s"} {
				sum += num(row[f])
			}
			if strings.Contains(k, "|1m|") && strings.Contains(k, "/cnc-1|") && !strings.HasSuffix(k, first) && math.Abs(sum-60) > 1e-6 {
				t.Fatalf("seed %d %s: %v s in one minute, want 60", seed, k, sum)
			}
		}
	}
}

// TestIdealCycleTimeFromASignal: a machine that announces its ideal cycle
// time is judged by it, not by the configured one.
func TestIdealCycleTimeFromASignal(t *testing.T) {
	h := newHarness(t, Config{Shifts: dayShift, IdealCycleTime: time.Minute, IdealCycleTimeSignal: "ideal_cycle_time_s"}, "")
	h.state(at("2026-11-30 08:00:00"), "running")
	h.feed(at("2026-11-30 08:00:00"), "ideal_cycle_time_s", collector.Float(45))
	h.good(at("2026-11-30 08:00:00"), 0)
	for k := 1; k <= 60; k++ { // 60 parts in the hour
		h.good(at("2026-11-30 08:00:00").Add(time.Duration(k)*time.Minute-30*time.Second), int64(k))
	}
	h.state(at("2026-11-30 09:01:00"), "running")
	hour := h.rows.get(t, h.a, WindowHour, at("2026-11-30 08:00:00"))
	want(t, hour, "performance", 60*45.0/3600)
}
