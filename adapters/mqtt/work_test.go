package mqtt

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/noordoostpolder/shopfloor/collector"
)

// message is a paho.Message for the worker's tests.
type message struct {
	qos   byte
	acked *atomic.Int32
}

func (m message) Duplicate() bool   { return false }
func (m message) Qos() byte         { return m.qos }
func (m message) Retained() bool    { return false }
func (m message) Topic() string     { return "factory/line-1/cnc-01/telemetry" }
func (m message) MessageID() uint16 { return 1 }
func (m message) Payload() []byte   { return []byte(`{"spindle_speed": 1200}`) }
func (m message) Ack()              { m.acked.Add(1) }

// emits records how many messages each Emit carried.
type emits struct{ calls chan int }

func (e emits) Emit(_ context.Context, bs ...collector.Batch) error { e.calls <- len(bs); return nil }
func (e emits) Bad(string, error)                                   {}
func (e emits) Connected(bool, error)                               {}

// TestWorkerLingers: a worker batches what arrives while it lingers
// into one Emit — QoS 0 always, QoS 1 only with enough connections that
// the broker's per-connection window does not make the wait a cap — and
// acks QoS 1 messages only after their Emit.
func TestWorkerLingers(t *testing.T) {
	for _, tc := range []struct {
		name        string
		qos         byte
		connections int
		together    bool
	}{
		{"QoS 0, one connection", 0, 1, true},
		{"QoS 1, one connection", 1, 1, false},
		{"QoS 1, two connections", 1, 2, false},
		{"QoS 1, four connections", 1, 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{URL: "tcp://127.0.0.1:1883", ClientID: "agent", Connections: tc.connections,
				Subscriptions: []Subscription{{Topic: "factory/#"}}}
			src, err := New(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			out := emits{calls: make(chan int, 2)}
			// A long linger: whether the two messages share an Emit then
			// depends on the rule, not on how fast this test runs.
			r := &run{s: src, out: out, ctx: ctx, linger: time.Minute}
			in := make(chan paho.Message) // unbuffered: a send returns once the worker took it
			done := make(chan struct{})
			go func() { defer close(done); r.work(in) }()
			var acked atomic.Int32
			in <- message{qos: tc.qos, acked: &acked}
			if !tc.together {
				select {
				case n := <-out.calls:
					if n != 1 {
						t.Fatalf("first Emit carried %d messages, want 1", n)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("a QoS 1 message waited for more; it must go at once here")
				}
				if tc.qos == 1 && acked.Load() != 1 {
					t.Errorf("%d acks after the first Emit, want 1", acked.Load())
				}
			}
			in <- message{qos: tc.qos, acked: &acked}
			if tc.together {
				if got := acked.Load(); got != 0 && tc.qos == 1 {
					t.Errorf("%d acks before any Emit", got)
				}
				cancel() // ends the linger: the worker handles what it holds
				select {
				case n := <-out.calls:
					if n != 2 {
						t.Errorf("Emit carried %d messages, want both", n)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("no Emit")
				}
			}
			cancel()
			<-done
		})
	}
}
