package collector_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// scriptedSource emits n messages, then either waits for ctx or fails.
type scriptedSource struct {
	n        int
	failAt   int // fail once after this many messages (0 = never)
	runs     atomic.Int32
	emitted  atomic.Int32
	stopWhen chan struct{}
}

func (s *scriptedSource) Run(ctx context.Context, out collector.Output) error {
	run := s.runs.Add(1)
	out.Connected(true, nil)
	for {
		i := int(s.emitted.Load())
		if i >= s.n {
			break
		}
		if s.failAt > 0 && i == s.failAt && run == 1 {
			return errors.New("connection lost")
		}
		err := out.Emit(ctx, collector.Batch{Origin: fmt.Sprintf("f/line-1/m-%d/telemetry", i%3), Samples: []collector.Sample{
			{Signal: "spindle_speed", Value: collector.Float(float64(i)), SourceTime: time.Unix(0, int64(i))},
			{Signal: "state", Value: collector.String("RUNNING"), SourceTime: time.Unix(0, int64(i))},
		}})
		if err != nil {
			return nil
		}
		s.emitted.Add(1)
	}
	out.Bad("invalid_json", errors.New("test"))
	<-ctx.Done()
	return nil
}

func newPipeline(t *testing.T, src collector.Source, sink collector.Sink, cfg collector.PipelineConfig) (*collector.Pipeline, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	p, err := collector.NewPipeline(cfg, []collector.SourceSpec{{Name: "src", Source: src, Normalize: collector.NormalizeConfig{
		Asset:   collector.AssetRule{FromOrigin: []string{"f/{line}/{machine}/telemetry"}},
		Mapping: []collector.MappingRule{{Match: "spindle_speed", Signal: collector.SignalSpindleSpeed}},
	}}}, collector.SinkSpec{Name: "sink", Sink: sink}, collector.NewMetrics(reg), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return p, reg
}

func runUntil(t *testing.T, p *collector.Pipeline, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	collectortest.Eventually(t, 10*time.Second, cond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestPipelineDeliversEverythingAndRetries(t *testing.T) {
	src := &scriptedSource{n: 1000, failAt: 300}
	sink := &collectortest.Sink{Fail: func(call int, _ []collector.Sample) error {
		if call%3 == 1 { // every third write fails transiently
			return &collector.RetryableError{Err: errors.New("503")}
		}
		return nil
	}}
	p, reg := newPipeline(t, src, sink, collector.PipelineConfig{BatchSize: 128, FlushInterval: 10 * time.Millisecond, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond})
	runUntil(t, p, func() error {
		if n := len(sink.Samples()); n != 2000 {
			return fmt.Errorf("%d samples written", n)
		}
		return nil
	})
	seen := map[float64]bool{}
	for _, s := range sink.Samples() {
		if s.Signal == collector.SignalSpindleSpeed {
			f, _ := s.Value.AsFloat()
			seen[f] = true
			if s.Asset.Line != "line-1" || !strings.HasPrefix(s.Asset.Machine, "m-") {
				t.Fatalf("asset not from topic: %+v", s.Asset)
			}
		} else if s.Signal != collector.SignalState || s.Value.Str() != "running" {
			t.Fatalf("unexpected sample %+v", s)
		}
	}
	if len(seen) != 1000 {
		t.Fatalf("%d distinct values, want 1000", len(seen))
	}
	if src.runs.Load() != 2 {
		t.Errorf("source ran %d times, want 2 (one restart after its failure)", src.runs.Load())
	}
	for name, want := range map[string]float64{
		"shopfloor_source_messages_total":      1000,
		"shopfloor_source_samples_total":       2000,
		"shopfloor_sink_samples_written_total": 2000,
		"shopfloor_source_restarts_total":      1,
		"shopfloor_pipeline_queue_samples":     0,
	} {
		if got := gather(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := gather(t, reg, "shopfloor_source_bad_inputs_total"); got < 1 {
		t.Errorf("bad inputs %v, want at least 1", got)
	}
	if got := gather(t, reg, "shopfloor_sink_errors_total"); got < 1 {
		t.Errorf("sink errors %v, want some", got)
	}
}

func TestPipelineRejectedBatchIsDroppedAndCounted(t *testing.T) {
	src := &scriptedSource{n: 10}
	sink := &collectortest.Sink{Fail: func(call int, _ []collector.Sample) error {
		if call == 1 {
			return errors.New("400 field type conflict")
		}
		return nil
	}}
	p, reg := newPipeline(t, src, sink, collector.PipelineConfig{BatchSize: 10, FlushInterval: 5 * time.Millisecond})
	runUntil(t, p, func() error {
		if src.emitted.Load() < 10 || sink.Calls() < 2 {
			return fmt.Errorf("emitted %d, calls %d", src.emitted.Load(), sink.Calls())
		}
		return nil
	})
	dropped := gather(t, reg, "shopfloor_sink_samples_dropped_total")
	if written := float64(len(sink.Samples())); written+dropped != 20 || dropped != 10 {
		t.Fatalf("written %v + dropped %v, want 10 + 10", written, dropped)
	}
	st := p.Status()
	if last := st[len(st)-1]; !strings.Contains(last.LastError, "field type conflict") {
		t.Errorf("sink status %+v lacks the refusal", last)
	}
}

func TestPipelineDrainsOnShutdown(t *testing.T) {
	src := &scriptedSource{n: 500}
	sink := &collectortest.Sink{}
	// A long flush interval: only the drain on shutdown writes the tail.
	p, _ := newPipeline(t, src, sink, collector.PipelineConfig{BatchSize: 400, FlushInterval: time.Hour})
	runUntil(t, p, func() error {
		if src.emitted.Load() < 500 {
			return errors.New("still emitting")
		}
		return nil
	})
	if n := len(sink.Samples()); n != 1000 {
		t.Fatalf("%d samples after drain, want 1000", n)
	}
}

func TestPipelineBlocksWhenFull(t *testing.T) {
	src := &scriptedSource{n: 1000}
	release := make(chan struct{})
	sink := &collectortest.Sink{Fail: func(call int, _ []collector.Sample) error {
		<-release
		return nil
	}}
	p, _ := newPipeline(t, src, sink, collector.PipelineConfig{QueueMessages: 10, BatchSize: 1, FlushInterval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	time.Sleep(100 * time.Millisecond) // give the source time to run into the bound
	if n := src.emitted.Load(); n > 12 {
		t.Fatalf("source emitted %d messages past a queue of 10 and a stuck sink", n)
	}
	close(release)
	collectortest.Eventually(t, 10*time.Second, func() error {
		if src.emitted.Load() < 1000 {
			return errors.New("not done")
		}
		return nil
	})
	cancel()
	<-done
	if n := len(sink.Samples()); n != 2000 {
		t.Fatalf("%d samples, want 2000", n)
	}
}

func gather(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

var _ = testutil.ToFloat64
