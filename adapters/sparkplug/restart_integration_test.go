//go:build integration

package sparkplug

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/noordoostpolder/shopfloor/adapters/influxdb"
	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// agent is the part of the shopfloor agent this test needs: a Sparkplug
// source, the pipeline and the InfluxDB sink, with a fresh Source (and so
// empty birth caches) every time it starts, like a restarted process.
type agent struct {
	cancel context.CancelFunc
	done   chan error
}

func startAgent(t *testing.T, mqttURL, influxURL, dataDir string) *agent {
	t.Helper()
	src := newHost(t, Config{URL: mqttURL, HostID: "shopfloor", RebirthMinInterval: 200 * time.Millisecond})
	sink, err := influxdb.New(influxdb.Config{URL: influxURL, Bucket: "db/autogen", Token: "any", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg := collector.PipelineConfig{BatchSize: 100, FlushInterval: 20 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		Queue: collector.QueueConfig{Dir: filepath.Join(dataDir, "queue")}, DeadLetterDir: filepath.Join(dataDir, "dead-letter")}
	cfg.SetDefaults()
	p, err := collector.NewPipeline(cfg, []collector.SourceSpec{{Name: "sparkplug", Source: src, Normalize: collector.NormalizeConfig{
		Asset: collector.AssetRule{MachineType: "cnc", FromOrigin: []string{"{area}/{line}/{machine}", "{area}/{machine}"}},
		Mapping: []collector.MappingRule{
			{Match: "Spindle/Speed", Signal: collector.SignalSpindleSpeed},
			{Match: "Program", Signal: collector.SignalProgram},
		},
	}}}, collector.SinkSpec{Name: "influxdb", Sink: sink}, collector.NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- p.Run(ctx) }()
	collectortest.Eventually(t, 15*time.Second, func() error {
		for _, st := range p.Status() {
			if st.Kind == "source" && !st.Up {
				return fmt.Errorf("source down: %s", st.LastError)
			}
		}
		return nil
	})
	t.Cleanup(func() { a.stop(t) })
	return a
}

func (a *agent) stop(t *testing.T) {
	a.cancel()
	select {
	case err := <-a.done:
		a.done <- err // for the cleanup
		if err != nil {
			t.Errorf("agent: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("agent did not stop")
	}
}

// speeds returns the spindle speeds InfluxDB holds for mill-1, in time order.
func speeds(influxURL string) ([]string, error) {
	res, err := collectortest.QueryErr(influxURL, "db", `SELECT spindle_speed_rpm FROM machine WHERE machine = 'mill-1' AND spindle_speed_rpm > 0`)
	if err != nil || len(res) == 0 {
		return nil, err
	}
	var out []string
	for _, r := range res[0].Values {
		out = append(out, fmt.Sprint(r[1]))
	}
	return out, nil
}

// TestInteropRestartBetweenBirthAndData restarts the agent after the
// edge node's births and before its data. The new agent cannot resolve the
// aliases of the data: it must write none of it, ask the edge node for a
// rebirth, and from then on write every value under its real name.
func TestInteropRestartBetweenBirthAndData(t *testing.T) {
	broker := collectortest.Mosquitto(t)
	influx := collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "db")

	// The restarted agent keeps its data directory, as a process would.
	dataDir := t.TempDir()
	first := startAgent(t, broker.URL(), influx.URL(), dataDir)
	edge := startEdgeNode(t)
	edge.do(m{"cmd": "connect", "url": broker.URL(), "group": "plant", "node": "line1", "bdSeq": 0, "autoRebirth": true})
	edge.do(m{"cmd": "birth", "device": nil, "metrics": []m{}})
	edge.do(m{"cmd": "birth", "device": "mill-1", "metrics": []m{
		{"name": "Spindle/Speed", "alias": 1, "type": "Double", "value": 1000},
		{"name": "Program", "alias": 2, "type": "String", "value": "O1"},
	}})
	collectortest.Eventually(t, 15*time.Second, func() error {
		if got, err := speeds(influx.URL()); err != nil || !slices.Equal(got, []string{"1000"}) {
			return fmt.Errorf("speeds %v (%v), want the birth's 1000", got, err)
		}
		return nil
	})
	first.stop(t)

	startAgent(t, broker.URL(), influx.URL(), dataDir)
	// Data by alias only, which the restarted agent has never seen a
	// birth for. One message: the rebirth it provokes resets the edge
	// node's seq, and a second one could race with it.
	edge.do(m{"cmd": "data", "device": "mill-1", "metrics": []m{{"alias": 1, "type": "Double", "value": 2}}})
	collectortest.Eventually(t, 15*time.Second, func() error {
		if n := edge.rebirthRequests(); n < 1 {
			return fmt.Errorf("no rebirth request reached the edge node")
		}
		// The rebirth (answered by the edge node) writes the last value
		// it holds, 1000 from its birth, again.
		if got, err := speeds(influx.URL()); err != nil || len(got) < 2 {
			return fmt.Errorf("speeds %v (%v), want the rebirth's value", got, err)
		}
		return nil
	})
	// Sparkplug timestamps are milliseconds; distinct ones keep two
	// quick messages from being one InfluxDB point.
	base := time.Now().UnixMilli()
	for i := 1; i <= 5; i++ {
		ts := fmt.Sprint(base + int64(i))
		edge.do(m{"cmd": "data", "device": "mill-1", "metrics": []m{
			{"alias": 1, "type": "Double", "value": 2000 + i, "timestamp": ts},
			{"alias": 2, "type": "String", "value": fmt.Sprintf("O%d", i), "timestamp": ts},
		}})
	}
	collectortest.Eventually(t, 15*time.Second, func() error {
		got, err := speeds(influx.URL())
		if err != nil || len(got) < 7 {
			return fmt.Errorf("speeds %v (%v), want every value after the rebirth", got, err)
		}
		return nil
	})
	got, _ := speeds(influx.URL())
	if want := []string{"1000", "1000", "2001", "2002", "2003", "2004", "2005"}; !slices.Equal(got, want) {
		t.Errorf("spindle speeds %v, want %v: the data before the rebirth must be left out, everything after kept", got, want)
	}
	_, rows := collectortest.Query(t, influx.URL(), "db", "SHOW FIELD KEYS FROM machine")
	var fields []string
	for _, r := range rows {
		fields = append(fields, fmt.Sprint(r[0]))
	}
	slices.Sort(fields)
	// Only real names: no alias number, no field invented for data that
	// could not be resolved.
	if want := []string{"program", "spindle_speed_rpm"}; !slices.Equal(fields, want) {
		t.Errorf("field keys %v, want %v", fields, want)
	}
}
