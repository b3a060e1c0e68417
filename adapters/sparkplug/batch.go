package sparkplug

import (
	"context"

	"github.com/noordoostpolder/shopfloor/collector"
)

// maxBatch bounds how many waiting messages a worker handles before it
// writes what they gave, so one queue record stays small.
const maxBatch = 256

// batch gathers what a worker emits and acknowledges while it handles the
// messages waiting in its shard, so that they cost one queue write and one
// burst of PUBACKs instead of one of each per message. It is the worker's
// Output during its loop; flush hands everything on and only then
// acknowledges, so a message is still never acknowledged before what it
// carried is queued.
type batch struct {
	out     collector.Output
	samples []collector.Sample
	spans   []span
	acks    []func()
	batches []collector.Batch
}

// span is one emitted batch's origin and place in batch.samples.
type span struct {
	origin     string
	start, end int
}

var _ collector.Output = (*batch)(nil)

// Emit keeps copies of the batches for flush.
func (b *batch) Emit(_ context.Context, bs ...collector.Batch) error {
	for _, x := range bs {
		start := len(b.samples)
		b.samples = append(b.samples, x.Samples...)
		b.spans = append(b.spans, span{x.Origin, start, len(b.samples)})
	}
	return nil
}

// Bad and Connected go straight through.
func (b *batch) Bad(reason string, err error) { b.out.Bad(reason, err) }
func (b *batch) Connected(up bool, err error) { b.out.Connected(up, err) }

// flush emits everything gathered as one call and then runs the held
// acknowledgements. After an Emit error nothing is acknowledged: the
// broker delivers the messages again to the next session.
func (b *batch) flush(ctx context.Context) error {
	defer b.reset()
	if len(b.spans) > 0 {
		// Batches are cut only now: b.samples may have moved while it grew.
		for _, sp := range b.spans {
			b.batches = append(b.batches, collector.Batch{Origin: sp.origin, Samples: b.samples[sp.start:sp.end]})
		}
		if err := b.out.Emit(ctx, b.batches...); err != nil {
			return err
		}
	}
	for _, ack := range b.acks {
		ack()
	}
	return nil
}

func (b *batch) reset() {
	clear(b.samples) // let the strings go
	clear(b.batches)
	clear(b.acks)
	b.samples, b.spans, b.acks, b.batches = b.samples[:0], b.spans[:0], b.acks[:0], b.batches[:0]
}
