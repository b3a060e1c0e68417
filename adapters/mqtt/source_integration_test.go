//go:build integration

package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

func testConfig(url, clientID string) Config {
	return Config{
		URL:      url,
		ClientID: clientID,
		Workers:  3,
		Subscriptions: []Subscription{
			{Topic: "factory/+/+/telemetry", QoS: qos(1), JSON: JSONFormat{TimeField: "ts"}},
		},
	}
}

func newSource(t *testing.T, cfg Config) *Source {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func seqMsgs(topic string, from, n int) []collectortest.Message {
	out := make([]collectortest.Message, n)
	for i := range out {
		out[i] = collectortest.Message{Topic: topic, Payload: fmt.Sprintf(`{"ts":%d,"seq":%d}`, 1732790000000+from+i, from+i)}
	}
	return out
}

// seqs returns the seq values received per topic, in order.
func seqs(out *collectortest.Output) map[string][]int {
	got := map[string][]int{}
	for _, b := range out.Batches() {
		for _, s := range b.Samples {
			if s.Signal == "seq" {
				v, _ := s.Value.AsInt()
				got[b.Origin] = append(got[b.Origin], int(v))
			}
		}
	}
	return got
}

func countSeqs(out *collectortest.Output) int {
	n := 0
	for _, v := range seqs(out) {
		n += len(v)
	}
	return n
}

func waitSeqs(t *testing.T, out *collectortest.Output, want int) {
	t.Helper()
	collectortest.Eventually(t, 30*time.Second, func() error {
		if n := countSeqs(out); n < want {
			return fmt.Errorf("%d of %d messages arrived", n, want)
		}
		return nil
	})
}

// interleaved is perTopic seq messages on each of topics topics (topicFmt
// with the topic's number), one per topic in turn. With maxPad, each
// carries a string field of 0 to maxPad-1 bytes besides.
func interleaved(topicFmt string, topics, perTopic, maxPad int) []collectortest.Message {
	var msgs []collectortest.Message
	for i := range perTopic {
		for j := range topics {
			m := seqMsgs(fmt.Sprintf(topicFmt, j), i, 1)[0]
			if maxPad > 0 {
				m.Payload = strings.Replace(m.Payload, "{", fmt.Sprintf(`{"pad":"%s",`, strings.Repeat("x", i*7%maxPad)), 1)
			}
			msgs = append(msgs, m)
		}
	}
	return msgs
}

// allInOrder waits for the messages of interleaved and checks that each
// topic received all of them in order.
func allInOrder(t *testing.T, out *collectortest.Output, topicFmt string, topics, perTopic int) {
	t.Helper()
	waitSeqs(t, out, topics*perTopic)
	got := seqs(out)
	for j := range topics {
		topic := fmt.Sprintf(topicFmt, j)
		inOrder(t, got[topic], topic, 0, perTopic)
	}
}

// inOrder checks that topic received exactly from..from+n-1 in order.
func inOrder(t *testing.T, got []int, topic string, from, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("%s: %d messages, want %d", topic, len(got), n)
	}
	for i, v := range got {
		if v != from+i {
			t.Fatalf("%s: message %d has seq %d, want %d (order broken or message lost)", topic, i, v, from+i)
		}
	}
}

func TestSourceDeliversAllInOrder(t *testing.T) {
	svc := collectortest.Mosquitto(t)
	out := &collectortest.Output{}
	collectortest.Start(t, newSource(t, testConfig(svc.URL(), "agent-order")), out)
	collectortest.WaitConnected(t, out, 1)

	const topics, perTopic = 5, 400
	pub := collectortest.Publisher(t, svc.URL())
	collectortest.Publish(t, pub, interleaved("factory/l1/m%d/telemetry", topics, perTopic, 0)...)
	allInOrder(t, out, "factory/l1/m%d/telemetry", topics, perTopic)
	for _, b := range out.Batches() {
		if len(b.Samples) != 1 || b.Samples[0].SourceTime.Equal(b.Samples[0].ReceiveTime) {
			t.Fatalf("batch %+v: want one seq sample with its payload time", b)
		}
	}
	if bad := out.BadCounts(); len(bad) != 0 {
		t.Errorf("bad inputs %v, want none", bad)
	}
}

func TestSourcePersistentSession(t *testing.T) {
	svc := collectortest.Mosquitto(t)
	cfg := testConfig(svc.URL(), "agent-persist")
	src := newSource(t, cfg)

	first := &collectortest.Output{}
	r := collectortest.Start(t, src, first)
	collectortest.WaitConnected(t, first, 1)
	r.Stop(t)
	if states := first.ConnectedStates(); states[len(states)-1] {
		t.Errorf("connection states %v: want down after stop", states)
	}

	const n = 500
	topic := "factory/l1/m1/telemetry"
	collectortest.Publish(t, collectortest.Publisher(t, svc.URL()), seqMsgs(topic, 0, n)...)

	second := &collectortest.Output{}
	collectortest.Start(t, src, second)
	waitSeqs(t, second, n)
	inOrder(t, seqs(second)[topic], topic, 0, n)
}

func TestSourceBrokerRestart(t *testing.T) {
	svc := collectortest.Mosquitto(t)
	src := newSource(t, testConfig(svc.URL(), "agent-restart"))
	out := &collectortest.Output{}
	r := collectortest.Start(t, src, out)
	collectortest.WaitConnected(t, out, 1)
	topic := "factory/l1/m1/telemetry"
	collectortest.Publish(t, collectortest.Publisher(t, svc.URL()), seqMsgs(topic, 0, 10)...)
	waitSeqs(t, out, 10)

	svc.Restart()
	err := r.Wait(t)
	if err == nil || !strings.Contains(err.Error(), "mqtt broker "+svc.URL()) || !strings.Contains(err.Error(), "connection lost") {
		t.Fatalf("Run after broker restart = %v, want a connection lost error naming the broker", err)
	}
	if states := out.ConnectedStates(); states[len(states)-1] {
		t.Errorf("connection states %v: want down after the loss", states)
	}

	// What the pipeline's supervisor does: call Run again after a backoff.
	ctx, cancel := context.WithCancel(context.Background())
	supervised := make(chan struct{})
	go func() {
		defer close(supervised)
		for ctx.Err() == nil {
			if err := src.Run(ctx, out); err != nil {
				t.Logf("Run: %v (retrying)", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond): // backoff, not synchronisation
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-supervised })
	collectortest.WaitConnected(t, out, 2)

	collectortest.Publish(t, collectortest.Publisher(t, svc.URL()), seqMsgs(topic, 10, 10)...)
	collectortest.Eventually(t, 30*time.Second, func() error {
		got := seqs(out)[topic]
		if len(got) == 0 || got[len(got)-1] != 19 {
			return fmt.Errorf("received %v, want up to 19", got)
		}
		return nil
	})
}

func TestSourceBadInput(t *testing.T) {
	svc := collectortest.Mosquitto(t)
	cfg := testConfig(svc.URL(), "agent-bad")
	cfg.MaxPayloadBytes = 512
	src := newSource(t, cfg)
	out := &collectortest.Output{}
	r := collectortest.Start(t, src, out)
	collectortest.WaitConnected(t, out, 1)

	topic := "factory/l1/m1/telemetry"
	big := `{"seq":99,"pad":"` + strings.Repeat("x", 600) + `"}`
	collectortest.Publish(t, collectortest.Publisher(t, svc.URL()),
		seqMsgs(topic, 0, 1)[0],
		collectortest.Message{Topic: topic, Payload: `{"seq":`},
		seqMsgs(topic, 1, 1)[0],
		collectortest.Message{Topic: topic, Payload: big},
		seqMsgs(topic, 2, 1)[0],
		collectortest.Message{Topic: topic, Payload: `{"ts":"never","seq":98}`},
		collectortest.Message{Topic: topic, Payload: `{"seq":3,"bad":1e999}`},
	)
	want := map[string]int{ReasonInvalidJSON: 1, ReasonOversized: 1, ReasonBadTimestamp: 1, ReasonNonFinite: 1}
	collectortest.Eventually(t, 10*time.Second, func() error {
		if got := out.BadCounts(); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("bad counts %v, want %v", got, want)
		}
		if n := countSeqs(out); n != 4 {
			return fmt.Errorf("%d valid messages, want 4", n)
		}
		return nil
	})
	inOrder(t, seqs(out)[topic], topic, 0, 4)
	for _, e := range out.BadErrors() {
		if !strings.Contains(e.Error(), topic) {
			t.Errorf("bad input error %q does not name the topic", e)
		}
		// The connection reads past a payload this large without
		// keeping it, and still says how large it was.
		if strings.Contains(e.Error(), "max_payload_bytes") && !strings.Contains(e.Error(), fmt.Sprintf("payload of %d bytes", len(big))) {
			t.Errorf("oversized error %q does not give the payload's %d bytes", e, len(big))
		}
	}

	// Bad input was acked: a new session gets only what comes next.
	r.Stop(t)
	again := &collectortest.Output{}
	collectortest.Start(t, src, again)
	collectortest.WaitConnected(t, again, 1)
	collectortest.Publish(t, collectortest.Publisher(t, svc.URL()), seqMsgs(topic, 100, 1)...)
	waitSeqs(t, again, 1)
	if got := seqs(again)[topic]; len(got) != 1 || got[0] != 100 || len(again.BadCounts()) != 0 {
		t.Errorf("after restart got %v and bad %v, want only seq 100: something was not acked", got, again.BadCounts())
	}
}

// blockingOutput blocks in Emit until ctx ends, like a pipeline whose queue
// stays full.
type blockingOutput struct {
	*collectortest.Output
	entered atomic.Int32
}

func (o *blockingOutput) Emit(ctx context.Context, _ ...collector.Batch) error {
	o.entered.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

func TestSourceNoAckWithoutEmit(t *testing.T) {
	topic := "factory/l1/m1/telemetry"

	t.Run("Emit error", func(t *testing.T) {
		svc := collectortest.Mosquitto(t)
		src := newSource(t, testConfig(svc.URL(), "agent-emit-error"))
		failing := &collectortest.Output{EmitErr: errors.New("queue closed")}
		r := collectortest.Start(t, src, failing)
		collectortest.WaitConnected(t, failing, 1)
		collectortest.Publish(t, collectortest.Publisher(t, svc.URL()), seqMsgs(topic, 7, 1)...)
		err := r.Wait(t)
		if !errors.Is(err, errEmitRefused) || !strings.Contains(err.Error(), "queue closed") {
			t.Fatalf("Run = %v, want it to end with the Emit error", err)
		}

		out := &collectortest.Output{}
		collectortest.Start(t, src, out)
		waitSeqs(t, out, 1)
		inOrder(t, seqs(out)[topic], topic, 7, 1)
	})

	t.Run("cancelled during Emit", func(t *testing.T) {
		svc := collectortest.Mosquitto(t)
		src := newSource(t, testConfig(svc.URL(), "agent-emit-cancel"))
		blocked := &blockingOutput{Output: &collectortest.Output{}}
		r := collectortest.Start(t, src, blocked)
		collectortest.WaitConnected(t, blocked.Output, 1)
		collectortest.Publish(t, collectortest.Publisher(t, svc.URL()), seqMsgs(topic, 3, 2)...)
		collectortest.Eventually(t, 10*time.Second, func() error {
			if blocked.entered.Load() == 0 {
				return errors.New("Emit not called yet")
			}
			return nil
		})
		r.Stop(t)

		out := &collectortest.Output{}
		collectortest.Start(t, src, out)
		waitSeqs(t, out, 2)
		inOrder(t, seqs(out)[topic], topic, 3, 2)
	})
}

func TestSourceConnectFailure(t *testing.T) {
	port := collectortest.FreePort(t)
	cfg := testConfig(fmt.Sprintf("tcp://127.0.0.1:%d", port), "agent-nobroker")
	cfg.ConnectTimeout = 2 * time.Second
	out := &collectortest.Output{}
	err := newSource(t, cfg).Run(context.Background(), out)
	if err == nil || !strings.Contains(err.Error(), cfg.URL) {
		t.Fatalf("Run without a broker = %v, want an error naming %s", err, cfg.URL)
	}
}

// TestSourceKeepAliveUnderAStream: the source reads messages before paho
// sees them, so paho's keep-alive sees only its own PINGRESPs. A stream
// longer than the keep-alive plus paho's ping timeout (10 s) must keep
// the connection: paho pings, and the broker's answers reach it (one
// lost would end the connection after 10 s; no PINGREQ at all, at QoS 0
// where the agent sends nothing else, and Mosquitto would end it after
// 3 s). The keep-alive is 2 s, not 1: Mosquitto counts in whole seconds
// and gives 1.5 keep-alives, which for 1 s can be as little as 1.0 s,
// while paho pings 1.0-1.25 s apart (a loaded CI lost that race).
func TestSourceKeepAliveUnderAStream(t *testing.T) {
	svc := collectortest.Mosquitto(t)
	for _, q := range []int{0, 1} {
		t.Run(fmt.Sprintf("QoS %d", q), func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(svc.URL(), fmt.Sprintf("agent-keepalive-%d", q))
			cfg.KeepAlive = 2 * time.Second
			cfg.Subscriptions[0].QoS = qos(q)
			out := &collectortest.Output{}
			collectortest.Start(t, newSource(t, cfg), out)
			collectortest.WaitConnected(t, out, 1)

			pub := collectortest.Publisher(t, svc.URL())
			topic := fmt.Sprintf("factory/l1/keepalive%d/telemetry", q)
			const n = 300 // 15 s at one message per 50 ms
			for i := range n {
				collectortest.Publish(t, pub, seqMsgs(topic, i, 1)...)
				time.Sleep(50 * time.Millisecond)
			}
			waitSeqs(t, out, n)
			inOrder(t, seqs(out)[topic], topic, 0, n)
			if states := out.ConnectedStates(); len(states) != 1 || !states[0] {
				t.Errorf("connection states %v, want one connect and no loss", states)
			}
		})
	}
}

// TestSourceOverWebSockets: over ws:// the connection's reads are
// WebSocket frames, whose bounds need not be those of MQTT packets; every
// message still arrives, in order per topic, and is acknowledged (the
// persistent session has nothing left for a second connection).
func TestSourceOverWebSockets(t *testing.T) {
	wsPort := collectortest.FreePort(t)
	svc := collectortest.Mosquitto(t, fmt.Sprintf("listener %d 127.0.0.1", wsPort), "protocol websockets")
	cfg := testConfig(fmt.Sprintf("ws://127.0.0.1:%d", wsPort), "agent-ws")
	out := &collectortest.Output{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- newSource(t, cfg).Run(ctx, out) }()
	collectortest.WaitConnected(t, out, 1)

	const topics, perTopic = 4, 500
	pub := collectortest.Publisher(t, svc.URL())
	// Payloads of many sizes, so packets straddle frames.
	collectortest.Publish(t, pub, interleaved("factory/ws/m%d/telemetry", topics, perTopic, 300)...)
	allInOrder(t, out, "factory/ws/m%d/telemetry", topics, perTopic)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}

	// Everything was acknowledged: the session holds no message for the
	// next connection, which gets only a new one (the broker would have
	// sent anything queued before it).
	again := &collectortest.Output{}
	collectortest.Start(t, newSource(t, cfg), again)
	collectortest.WaitConnected(t, again, 1)
	collectortest.Publish(t, pub, seqMsgs("factory/ws/marker/telemetry", 0, 1)...)
	waitSeqs(t, again, 1)
	if n := countSeqs(again); n != 1 {
		t.Errorf("%d messages redelivered: their PUBACKs never reached the broker", n-1)
	}
}
