//go:build integration

package main

import (
	"encoding/json"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// scriptedHour is one machine's 08:00-09:02 on 2026-11-30, a message every
// 15 s: running, an alarm from 08:20 to 08:30, a part every 75 s while
// running, every tenth part a reject. Worked out by hand for 08:00-09:00:
// run 3000 s, alarm 600 s, 39 parts (15 before the alarm, 24 after), 3 of
// them rejects, so
//
//	availability = 3000/3600 = 0.8333
//	performance  = 39 × 60 s / 3000 s = 0.78
//	quality      = 36/39 = 0.9231
//	OEE          = 0.6, MTBF 3000 s, MTTR 600 s.
func scriptedHour() []collectortest.Message {
	start := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	var msgs []collectortest.Message
	good, reject, parts := 0, 0, 0
	for i := 0; i <= 62*4; i++ {
		t := time.Duration(i) * 15 * time.Second
		state := "running"
		if t >= 20*time.Minute && t < 30*time.Minute {
			state = "alarm"
		}
		if i > 0 && i%5 == 0 && state == "running" {
			parts++
			if parts%10 == 0 {
				reject++
			} else {
				good++
			}
		}
		msgs = append(msgs, collectortest.Message{
			Topic: "factory/line-1/cnc-1/telemetry",
			Payload: fmt.Sprintf(`{"ts":%d,"state":%q,"part_count":%d,"reject_count":%d,"spindle_speed":12000}`,
				start.Add(t).UnixMilli(), state, good, reject),
		})
	}
	return msgs
}

// TestKPIHourEndToEnd publishes the scripted hour with past timestamps in
// a few seconds, stopping and restarting the agent in the middle of it,
// and finds the hand-computed OEE row in InfluxDB.
func TestKPIHourEndToEnd(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, "../../deploy/examples/kpi.yaml", broker, influx, "shopfloor")
	pub := collectortest.Publisher(t, broker.URL())
	msgs := scriptedHour()
	half := 40 * 4 // up to 08:40

	collectortest.Publish(t, pub, msgs[:half]...)
	// The 08:38 minute row means the engine has taken in the first part.
	collectortest.Eventually(t, 30*time.Second, func() error {
		series, err := collectortest.QueryErr(influx.URL(), "shopfloor",
			`SELECT run_s FROM kpi WHERE machine = 'cnc-1' AND "window" = '1m' AND time = '2026-11-30T08:38:00Z'`)
		if err != nil || len(series) == 0 {
			return fmt.Errorf("no 08:38 row yet (%v)", err)
		}
		return nil
	})
	agent.stop() // mid-hour: the KPI state goes to the data directory
	agent.start()
	collectortest.Publish(t, pub, msgs[half:]...)

	fields := []string{"availability", "performance", "quality", "oee", "run_s", "alarm_s", "planned_s", "good", "reject", "mtbf_s", "mttr_s"}
	want := map[string]float64{
		"availability": 3000.0 / 3600, "performance": 0.78, "quality": 36.0 / 39, "oee": 0.6,
		"run_s": 3000, "alarm_s": 600, "planned_s": 3600, "good": 36, "reject": 3, "mtbf_s": 3000, "mttr_s": 600,
	}
	var got map[string]float64
	collectortest.Eventually(t, 60*time.Second, func() error {
		series, err := collectortest.QueryErr(influx.URL(), "shopfloor", fmt.Sprintf(
			`SELECT %s FROM kpi WHERE machine = 'cnc-1' AND "window" = '1h' AND time = '2026-11-30T08:00:00Z'`, quoteAll(fields)))
		if err != nil || len(series) == 0 || len(series[0].Values) == 0 {
			return fmt.Errorf("no 08:00 hour row yet (%v)", err)
		}
		got = map[string]float64{}
		for i, c := range series[0].Columns {
			if n, ok := series[0].Values[0][i].(json.Number); ok {
				got[c], _ = n.Float64()
			}
		}
		if got["planned_s"] != 3600 {
			return fmt.Errorf("hour row not final yet: %v", got)
		}
		return nil
	})
	for f, w := range want {
		if math.Abs(got[f]-w) > 1e-9 {
			t.Errorf("%s = %v, want %v", f, got[f], w)
		}
	}
	// The line roll-up of a one-machine line is the machine.
	_, rows := collectortest.Query(t, influx.URL(), "shopfloor",
		`SELECT oee FROM kpi WHERE machine = '' AND line = 'line-1' AND "window" = '1h' AND time = '2026-11-30T08:00:00Z'`)
	if len(rows) != 1 {
		t.Fatalf("line roll-up rows %v", rows)
	}
	if oee, _ := rows[0][1].(json.Number).Float64(); math.Abs(oee-0.6) > 1e-9 {
		t.Errorf("line oee = %v, want 0.6", oee)
	}
	if late := agent.metric("shopfloor_kpi_late_samples_total"); late != 0 {
		t.Errorf("%v samples came too late across the restart, want 0", late)
	}
	agent.stop()
}

func quoteAll(fields []string) string {
	out := ""
	for i, f := range fields {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%q", f)
	}
	return out
}
