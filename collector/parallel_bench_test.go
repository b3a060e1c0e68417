package collector_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/live"
)

// burstSource emits its messages, 50 at a time as an MQTT worker does,
// as fast as the pipeline takes them, then reports done.
type burstSource struct {
	messages int
	line     string
	done     chan struct{}
}

func (s *burstSource) Run(ctx context.Context, out collector.Output) error {
	out.Connected(true, nil)
	ts := time.Unix(1764403200, 0)
	batches := make([]collector.Batch, 50)
	for i := 0; i < s.messages; i += len(batches) {
		for k := range batches {
			m := i + k
			t := ts.Add(time.Duration(m) * time.Millisecond)
			batches[k] = collector.Batch{Origin: fmt.Sprintf("f/%s/m-%02d/telemetry", s.line, m%20), Samples: []collector.Sample{
				{Signal: "spindle_speed", Value: collector.Float(float64(12000 + m%1000)), SourceTime: t},
				{Signal: "spindle_load", Value: collector.Float(40.5), SourceTime: t},
				{Signal: "temperature", Value: collector.Float(36.25), SourceTime: t},
				{Signal: "power_w", Value: collector.Float(5400), SourceTime: t},
				{Signal: "part_count", Value: collector.Int(int64(m)), SourceTime: t},
				{Signal: "state", Value: collector.String("running"), SourceTime: t},
			}}
		}
		if err := out.Emit(ctx, batches...); err != nil {
			return nil
		}
	}
	close(s.done)
	<-ctx.Done()
	return nil
}

type discardSink struct{}

func (discardSink) Write(context.Context, []collector.Sample) error { return nil }

// BenchmarkSourcesInParallel is what several sources cost when they emit
// at once into one pipeline: normalisation, the queue's group-committed
// appends (fsync at the default interval) and the live view, as the agent
// wires them; the writer drains to a sink that discards. One op is one
// message of six samples, so ns/op per source count shows whether sources
// wait on each other: with no contention, 2 sources on 2 cores take about
// half the time per message that 1 does.
func BenchmarkSourcesInParallel(b *testing.B) {
	for _, n := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("sources=%d", n), func(b *testing.B) {
			per := max(b.N/n, 50)
			var specs []collector.SourceSpec
			var srcs []*burstSource
			for i := range n {
				s := &burstSource{messages: per, line: fmt.Sprintf("line-%d", i), done: make(chan struct{})}
				srcs = append(srcs, s)
				specs = append(specs, collector.SourceSpec{Name: fmt.Sprintf("src-%d", i), Source: s, Normalize: collector.NormalizeConfig{
					Asset:   collector.AssetRule{FromOrigin: []string{"f/{line}/{machine}/telemetry"}},
					Mapping: []collector.MappingRule{{Match: "spindle_speed", Signal: collector.SignalSpindleSpeed}},
				}})
			}
			cfg := collector.PipelineConfig{Queue: collector.QueueConfig{Dir: b.TempDir()}, DeadLetterDir: b.TempDir(), BatchSize: 30000}
			p, err := collector.NewPipeline(cfg, specs, collector.SinkSpec{Name: "sink", Sink: discardSink{}},
				collector.NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				b.Fatal(err)
			}
			p.Observe(live.New().Observe)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			b.ResetTimer()
			wg.Go(func() { _ = p.Run(ctx) })
			for _, s := range srcs {
				<-s.done
			}
			b.StopTimer()
			cancel()
			wg.Wait()
		})
	}
}
