// Package collectortest holds test helpers for code built on collector: a
// recording Output for adapter unit tests, and starters for the real
// services (Mosquitto, InfluxDB) that integration tests talk to.
package collectortest

import (
	"context"
	"sync"

	"github.com/noordoostpolder/shopfloor/collector"
)

// Output records what a source emits. The zero value is ready to use.
type Output struct {
	mu        sync.Mutex
	batches   []collector.Batch
	bad       map[string]int
	badErrs   []error
	connected []bool
	// EmitErr, when set, is returned by Emit instead of recording.
	EmitErr error
}

var _ collector.Output = (*Output)(nil)

// Emit records the batches.
func (o *Output) Emit(ctx context.Context, bs ...collector.Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.EmitErr != nil {
		return o.EmitErr
	}
	for _, b := range bs {
		b.Samples = append([]collector.Sample(nil), b.Samples...)
		o.batches = append(o.batches, b)
	}
	return nil
}

// Bad records a bad input by reason.
func (o *Output) Bad(reason string, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.bad == nil {
		o.bad = map[string]int{}
	}
	o.bad[reason]++
	o.badErrs = append(o.badErrs, err)
}

// Connected records a connection state change.
func (o *Output) Connected(up bool, _ error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.connected = append(o.connected, up)
}

// Batches returns a copy of the batches emitted so far.
func (o *Output) Batches() []collector.Batch {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]collector.Batch(nil), o.batches...)
}

// Samples returns every emitted sample, in order.
func (o *Output) Samples() []collector.Sample {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []collector.Sample
	for _, b := range o.batches {
		out = append(out, b.Samples...)
	}
	return out
}

// BadCounts returns bad inputs counted by reason.
func (o *Output) BadCounts() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]int, len(o.bad))
	for k, v := range o.bad {
		out[k] = v
	}
	return out
}

// BadErrors returns the errors passed to Bad, in order.
func (o *Output) BadErrors() []error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]error(nil), o.badErrs...)
}

// ConnectedStates returns the sequence of connection states reported.
func (o *Output) ConnectedStates() []bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]bool(nil), o.connected...)
}
