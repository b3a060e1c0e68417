package main

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/adapters/influxdb"
	"github.com/noordoostpolder/shopfloor/adapters/mqtt"
	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

// BenchmarkMessagePath is the agent's CPU cost per message outside the
// network: decode a JSON payload of the example's shape, normalise it with
// the example's rules, encode it as line protocol. One op is one message
// (one point of 7 fields), rotating over 50 machines so the caches see
// what a real floor gives them.
func BenchmarkMessagePath(b *testing.B) {
	var cfg Config
	env := map[string]string{}
	getenv := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := config.Load("../../deploy/examples/mqtt-json.yaml", &cfg, getenv); err != nil {
		b.Fatal(err)
	}
	src := cfg.Sources[0]
	format := src.MQTT.Subscriptions[0].JSON
	norm, err := collector.NewNormalizer(src.normalize())
	if err != nil {
		b.Fatal(err)
	}
	const machines = 50
	topics := make([]string, machines)
	payloads := make([][]byte, machines)
	for m := range payloads {
		msg := telemetryPayload(fmt.Sprintf("line-%d", m%5), fmt.Sprintf("cnc-%02d", m), 1764403200000+int64(m), m)
		topics[m], payloads[m] = msg[0], []byte(msg[1])
	}
	var (
		dec      mqtt.Decoder
		raw      []collector.Sample
		samples  []collector.Sample
		problems []collector.Problem
		lines    []byte
	)
	now := time.Now()
	b.SetBytes(int64(len(payloads[0])))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := i % machines
		raw, err = dec.Decode(payloads[m], format, now, raw[:0])
		if err != nil {
			b.Fatal(err)
		}
		samples, problems = norm.Normalize(collector.Batch{Origin: topics[m], Samples: raw}, samples[:0], problems[:0])
		if len(problems) > 0 {
			b.Fatal(problems[0].Err)
		}
		lines, _, err = influxdb.AppendLines(lines[:0], "machine", samples)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if len(samples) != 7 {
		b.Fatalf("%d samples per message, want 7", len(samples))
	}
	if os.Getenv("SHOPFLOOR_BENCH_SHOW") != "" {
		b.Logf("last line: %s", lines)
	}
}

// telemetryPayload is one message of the example's shape: topic, payload.
// samplesPerTelemetry is how many samples one telemetryPayload becomes.
const samplesPerTelemetry = 7

func telemetryPayload(line, machine string, ts int64, i int) [2]string {
	states := []string{"running", "idle", "setup"}
	return [2]string{
		fmt.Sprintf("factory/%s/%s/telemetry", line, machine),
		fmt.Sprintf(`{"ts":%d,"state":%q,"spindle_speed":%d,"spindle_load":%.1f,"part_count":%d,"temperature":36.25,"power_w":5400.5,"program":"O%04d"}`,
			ts, states[i%len(states)], 12000+i, 40+float64(i%100)/10, i, 1000+i%7),
	}
}
