package sparkplug

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"

	"github.com/noordoostpolder/shopfloor/collector"
)

// emitLog records each Emit call and the acks given before it.
type emitLog struct {
	mu      sync.Mutex
	calls   []int // batches per Emit
	acked   *int  // acks so far, read at each Emit
	ackedAt []int
	err     error
}

func (e *emitLog) Emit(_ context.Context, bs ...collector.Batch) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, len(bs))
	e.ackedAt = append(e.ackedAt, *e.acked)
	return e.err
}
func (e *emitLog) Bad(string, error)     {}
func (e *emitLog) Connected(bool, error) {}

// TestLoopBatchesWaitingMessages: the messages waiting in a worker's shard
// are emitted together, in one Emit, and acknowledged only after it; when
// that Emit fails none of them is acknowledged and the run stops.
func TestLoopBatchesWaitingMessages(t *testing.T) {
	for _, emitErr := range []error{nil, errors.New("queue full")} {
		h := newHarness(t, Config{})
		acks := 0
		out := &emitLog{acked: &acks, err: emitErr}
		h.w.out = out
		in := make(chan *message, 8)
		msg := func(topicName string, data []byte) *message {
			tp, err := parseTopic(topicName)
			if err != nil {
				t.Fatal(err)
			}
			return &message{topic: topicName, t: tp, payload: data, recv: h.now, ack: func() { acks++ }}
		}
		in <- msg("spBv1.0/G/NBIRTH/E", encode(t, payload(1000, 0, metric("bdSeq", TypeInt64, uint64(1)), metric("Uptime", TypeInt64, uint64(5), withAlias(10)))))
		in <- msg("spBv1.0/G/DBIRTH/E/d1", encode(t, payload(1000, 1, metric("Count", TypeInt32, uint32(7), withAlias(2)))))
		for seq := 2; seq < 6; seq++ {
			in <- msg("spBv1.0/G/DDATA/E/d1", encode(t, payload(2000, seq, metric("", 0, uint32(seq), withAlias(2)))))
		}
		ctx, cancel := context.WithCancel(context.Background())
		h.w.ctx = ctx
		var stopped error
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.w.loop(in, func(err error) { stopped = err; cancel() })
		}()
		if emitErr != nil {
			<-done
			if len(out.calls) != 1 || acks != 0 || !errors.Is(stopped, emitErr) {
				t.Errorf("Emit failing: %d Emit calls, %d acks, stop cause %v; want 1, 0 and the Emit error", len(out.calls), acks, stopped)
			}
			continue
		}
		// Wait until the worker has taken all six (the channel is empty and
		// a flush happened), then stop it.
		for {
			out.mu.Lock()
			n := len(out.calls)
			out.mu.Unlock()
			if n > 0 && len(in) == 0 {
				break
			}
			runtime.Gosched()
		}
		cancel()
		<-done
		if len(out.calls) != 1 || out.calls[0] != 6 {
			t.Errorf("Emit calls %v, want one carrying the six messages' batches", out.calls)
		}
		if out.ackedAt[0] != 0 || acks != 6 {
			t.Errorf("%d acks before the Emit and %d after, want 0 and 6", out.ackedAt[0], acks)
		}
	}
}
