package main

import (
	"testing"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

// TestPipelineBatchFromSink: the sink's batch_size counts points, the
// pipeline's batch counts samples; a pipeline batch holds enough samples
// for batch_size points of several fields each, not batch_size samples
// (which made requests a sixth of the size meant).
func TestPipelineBatchFromSink(t *testing.T) {
	for _, tc := range []struct {
		name, sink     string
		want, inFlight int
	}{
		{"default", "", 5000 * samplesPerPoint, 2},
		{"set", "\n    batch_size: 1000\n    max_in_flight: 1", 1000 * samplesPerPoint, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			yaml := "sources:\n  - name: m\n    mqtt: {url: tcp://127.0.0.1:1883, client_id: agent, subscriptions: [{topic: a/#}]}\n    asset: {machine: m1}\n" +
				"sink:\n  influxdb:\n    url: http://127.0.0.1:8086\n    bucket: b" + tc.sink + "\n"
			var cfg Config
			if err := config.Parse("agent.yaml", []byte(yaml), &cfg, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
				t.Fatal(err)
			}
			if cfg.Pipeline.BatchSize != tc.want || cfg.Pipeline.MaxInFlight != tc.inFlight {
				t.Errorf("pipeline batch %d samples, %d in flight; want %d and %d", cfg.Pipeline.BatchSize, cfg.Pipeline.MaxInFlight, tc.want, tc.inFlight)
			}
		})
	}
}
