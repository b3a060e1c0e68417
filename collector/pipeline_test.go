package collector_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	if cfg.Queue.Dir == "" {
		cfg.Queue.Dir = t.TempDir()
	}
	if cfg.DeadLetterDir == "" {
		cfg.DeadLetterDir = t.TempDir()
	}
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
		"shopfloor_queue_samples":              0,
		"shopfloor_queue_records":              0,
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

// A sink that refuses one sample (400, a field type conflict) gets it
// isolated, even from the other sample of its message: it goes to the
// dead-letter file with the reason and everything else is written.
func TestPipelineRefusedSamplesGoToDeadLetters(t *testing.T) {
	src := &scriptedSource{n: 40}
	poison := func(s collector.Sample) bool {
		f, _ := s.Value.AsFloat()
		return s.Signal == collector.SignalSpindleSpeed && f == 17
	}
	sink := &collectortest.Sink{Fail: func(_ int, batch []collector.Sample) error {
		for _, s := range batch {
			if poison(s) {
				return errors.New("400 field type conflict")
			}
		}
		return nil
	}}
	dead := t.TempDir()
	p, reg := newPipeline(t, src, sink, collector.PipelineConfig{BatchSize: 30, FlushInterval: 5 * time.Millisecond, DeadLetterDir: dead})
	runUntil(t, p, func() error {
		if got := gather(t, reg, "shopfloor_sink_dead_letter_samples_total"); got != 1 {
			return fmt.Errorf("dead letters %v", got)
		}
		if n := len(sink.Samples()); n != 79 {
			return fmt.Errorf("%d samples written", n)
		}
		return nil
	})
	for _, s := range sink.Samples() {
		if poison(s) {
			t.Fatal("the refused sample was written")
		}
	}
	b, err := os.ReadFile(filepath.Join(dead, "sink.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var dl collector.DeadLetter
	if err := json.Unmarshal(b, &dl); err != nil {
		t.Fatalf("dead-letter file %q: %v", b, err)
	}
	if !strings.Contains(dl.Reason, "field type conflict") || len(dl.Samples) != 1 || dl.Samples[0].Value != "17" || dl.Samples[0].Machine != "m-2" {
		t.Errorf("dead letter %+v, want the refused sample of message 17 alone, with the reason", dl)
	}
	st := p.Status()
	if last := st[len(st)-1]; !strings.Contains(last.LastError, "field type conflict") || !last.Up {
		t.Errorf("sink status %+v: want up, with the refusal as last error", last)
	}
}

// What is queued while the sink is down survives a restart of the
// pipeline and is delivered by the next one, once.
func TestPipelineQueueSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	down := &collectortest.Sink{Fail: func(int, []collector.Sample) error {
		return &collector.RetryableError{Err: errors.New("connection refused")}
	}}
	first := &scriptedSource{n: 500}
	p, reg := newPipeline(t, first, down, collector.PipelineConfig{Queue: collector.QueueConfig{Dir: dir}, RetryMin: time.Millisecond, RetryMax: 10 * time.Millisecond, DrainTimeout: 50 * time.Millisecond})
	runUntil(t, p, func() error {
		if got := gather(t, reg, "shopfloor_queue_samples"); got != 1000 {
			return fmt.Errorf("%v samples queued", got)
		}
		return nil
	})
	up := &collectortest.Sink{}
	p, reg = newPipeline(t, &scriptedSource{}, up, collector.PipelineConfig{Queue: collector.QueueConfig{Dir: dir}})
	runUntil(t, p, func() error {
		if n := len(up.Samples()); n != 1000 {
			return fmt.Errorf("%d samples written", n)
		}
		return nil
	})
	if got := gather(t, reg, "shopfloor_queue_samples"); got != 0 {
		t.Errorf("%v samples still queued", got)
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

// A sink that stores a batch except samples it cannot represent reports
// them; they are counted as dropped, not as written, and never retried.
func TestPipelineCountsUnwritableSamples(t *testing.T) {
	src := &scriptedSource{n: 10}
	sink := &collectortest.Sink{Fail: func(call int, batch []collector.Sample) error {
		if call == 1 {
			return &collector.UnwritableError{Samples: 3, Err: errors.New("NaN")}
		}
		return nil
	}}
	p, reg := newPipeline(t, src, sink, collector.PipelineConfig{BatchSize: 20, FlushInterval: time.Hour})
	runUntil(t, p, func() error {
		if w, d := gather(t, reg, "shopfloor_sink_samples_written_total"), gather(t, reg, "shopfloor_sink_samples_dropped_total"); w+d != 20 {
			return fmt.Errorf("written %v + dropped %v", w, d)
		}
		return nil
	})
	if d := gather(t, reg, "shopfloor_sink_samples_dropped_total"); d != 3 {
		t.Errorf("dropped %v, want the 3 unwritable samples", d)
	}
	if sink.Calls() != 1 {
		t.Errorf("%d write calls for one full batch, want 1: unwritable samples are not retried", sink.Calls())
	}
}

// multiSource emits its messages in one Emit, as the MQTT source does with
// the messages waiting in a worker's shard.
type multiSource struct{ batches []collector.Batch }

func (s *multiSource) Run(ctx context.Context, out collector.Output) error {
	out.Connected(true, nil)
	if err := out.Emit(ctx, s.batches...); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// TestPipelineEmitsSeveralBatchesAsOne: several batches in one Emit keep
// their own origins (and so their assets), and count as messages each.
func TestPipelineEmitsSeveralBatchesAsOne(t *testing.T) {
	src := &multiSource{}
	for i := range 3 {
		src.batches = append(src.batches, collector.Batch{Origin: fmt.Sprintf("f/line-%d/m-%d/telemetry", i, i), Samples: []collector.Sample{
			{Signal: "spindle_speed", Value: collector.Float(float64(i)), SourceTime: time.Unix(1, 0)},
		}})
	}
	sink := &collectortest.Sink{}
	p, reg := newPipeline(t, src, sink, collector.PipelineConfig{BatchSize: 128, FlushInterval: 10 * time.Millisecond})
	runUntil(t, p, func() error {
		if n := len(sink.Samples()); n != 3 {
			return fmt.Errorf("%d samples written", n)
		}
		return nil
	})
	for _, s := range sink.Samples() {
		v, _ := s.Value.AsFloat()
		if want := fmt.Sprintf("m-%d", int(v)); s.Asset.Machine != want || s.Asset.Line != fmt.Sprintf("line-%d", int(v)) {
			t.Errorf("sample %v has asset %+v, want machine %s from its own topic", v, s.Asset, want)
		}
	}
	if got := gather(t, reg, "shopfloor_source_messages_total"); got != 3 {
		t.Errorf("messages %v, want 3", got)
	}
	if got := len(p.Origins()["src"]); got != 3 {
		t.Errorf("%d origins, want 3", got)
	}
}

// gateSink holds the write of the queue's first batch (the one with the
// first message) until ctx ends and lets every other one through.
type gateSink struct {
	mu      sync.Mutex
	calls   int
	samples []collector.Sample
}

func (s *gateSink) Write(ctx context.Context, samples []collector.Sample) error {
	first := false
	for _, smp := range samples {
		if f, ok := smp.Value.AsFloat(); ok && f == 0 && smp.Signal != "state" {
			first = true
		}
	}
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	if first {
		<-ctx.Done()
		return ctx.Err()
	}
	s.mu.Lock()
	s.samples = append(s.samples, samples...)
	s.mu.Unlock()
	return nil
}

func (s *gateSink) state() (calls, written int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, len(s.samples)
}

// TestPipelineWritesInFlightAndAcksInOrder: up to MaxInFlight batches are
// written at once, and a later batch that was stored is not acknowledged
// before an earlier one: when the earlier never lands, the next run sends
// both again rather than losing the earlier.
func TestPipelineWritesInFlightAndAcksInOrder(t *testing.T) {
	for _, inFlight := range []int{1, 2, 3} {
		t.Run(fmt.Sprint(inFlight), func(t *testing.T) {
			dir := t.TempDir()
			gate := &gateSink{}
			cfg := collector.PipelineConfig{Queue: collector.QueueConfig{Dir: dir}, BatchSize: 100, FlushInterval: time.Millisecond,
				MaxInFlight: inFlight, DrainTimeout: 50 * time.Millisecond}
			src := &scriptedSource{n: 500}
			p, _ := newPipeline(t, src, gate, cfg)
			runUntil(t, p, func() error {
				// The first write hangs; the writer goes on with the next
				// batches only while fewer than MaxInFlight are out.
				if calls, _ := gate.state(); calls < inFlight || src.emitted.Load() < 500 {
					return fmt.Errorf("%d writes started, %d messages emitted", calls, src.emitted.Load())
				}
				return nil
			})
			calls, written := gate.state()
			// The first hangs; the writer went on with the next ones,
			// which are done but cannot land before it, and stopped at
			// MaxInFlight.
			if calls != inFlight {
				t.Errorf("%d writes while the first hung, want %d", calls, inFlight)
			}
			if inFlight > 1 && written == 0 {
				t.Errorf("nothing stored besides the hanging write")
			}

			sink := &collectortest.Sink{}
			p, reg := newPipeline(t, &scriptedSource{}, sink, cfg)
			runUntil(t, p, func() error {
				if got := gather(t, reg, "shopfloor_queue_samples"); got != 0 {
					return fmt.Errorf("%v samples queued", got)
				}
				return nil
			})
			// Only what the first run had stored may be missing now; the
			// hanging batch must come again.
			seen := map[float64]bool{}
			gate.mu.Lock()
			for _, s := range gate.samples {
				if f, ok := s.Value.AsFloat(); ok && s.Signal != "state" {
					seen[f] = true
				}
			}
			gate.mu.Unlock()
			if !seen[0] {
				resent := false
				for _, s := range sink.Samples() {
					resent = resent || (s.Value == collector.Float(0) && s.Signal != "state")
				}
				if !resent {
					t.Error("the batch whose write never returned was not sent again after the restart")
				}
			}
			for _, s := range sink.Samples() {
				if f, ok := s.Value.AsFloat(); ok && s.Signal != "state" {
					seen[f] = true
				}
			}
			if len(seen) != 500 {
				t.Errorf("after the restart %d of 500 messages arrived; the rest were acknowledged without being stored", len(seen))
			}
		})
	}
}

// TestPipelineWritesTheTailOfABurst: with a flush interval of an hour, a
// stream that filled batches has its partial tail written as soon as it
// pauses, while a first trickle that never filled one still waits (and
// goes out with the drain at shutdown).
func TestPipelineWritesTheTailOfABurst(t *testing.T) {
	for _, tc := range []struct {
		name     string
		messages int // two samples each; batches of 100 samples
		running  int // samples written before shutdown
	}{
		{"burst", 130, 260},
		{"trickle", 30, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &scriptedSource{n: tc.messages}
			sink := &collectortest.Sink{}
			p, _ := newPipeline(t, src, sink, collector.PipelineConfig{BatchSize: 100, FlushInterval: time.Hour})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			collectortest.Eventually(t, 10*time.Second, func() error {
				if n := len(sink.Samples()); src.emitted.Load() < int32(tc.messages) || n < tc.running {
					return fmt.Errorf("%d messages emitted, %d samples written", src.emitted.Load(), n)
				}
				return nil
			})
			// Ten times the pause that ends a burst: a tail the writer
			// meant to send is out by now; nothing else may be.
			time.Sleep(200 * time.Millisecond)
			if n := len(sink.Samples()); n != tc.running {
				t.Errorf("%d samples written while running, want %d", n, tc.running)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if n := len(sink.Samples()); n != 2*tc.messages {
				t.Errorf("%d samples after shutdown, want %d", n, 2*tc.messages)
			}
		})
	}
}
