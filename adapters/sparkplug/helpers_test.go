package sparkplug

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/noordoostpolder/shopfloor/adapters/sparkplug/sparkplugpb"
	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// Builders for Go-encoded payloads. The interop tests use an independent
// encoder (npm sparkplug-payload); these keep the unit tests fast.

func u64(v uint64) *uint64 { return &v }

type metricOpt func(m *sparkplugpb.Payload_Metric)

func withAlias(a uint64) metricOpt {
	return func(m *sparkplugpb.Payload_Metric) { m.Alias = u64(a) }
}

func withTimestamp(ms uint64) metricOpt {
	return func(m *sparkplugpb.Payload_Metric) { m.Timestamp = u64(ms) }
}

func historical() metricOpt {
	return func(m *sparkplugpb.Payload_Metric) { m.IsHistorical = proto.Bool(true) }
}

func withProps(kv ...any) metricOpt {
	return func(m *sparkplugpb.Payload_Metric) {
		ps := &sparkplugpb.Payload_PropertySet{}
		for i := 0; i < len(kv); i += 2 {
			ps.Keys = append(ps.Keys, kv[i].(string))
			switch v := kv[i+1].(type) {
			case string:
				ps.Values = append(ps.Values, &sparkplugpb.Payload_PropertyValue{Type: proto.Uint32(uint32(TypeString)), Value: &sparkplugpb.Payload_PropertyValue_StringValue{StringValue: v}})
			case int:
				ps.Values = append(ps.Values, &sparkplugpb.Payload_PropertyValue{Type: proto.Uint32(uint32(TypeInt32)), Value: &sparkplugpb.Payload_PropertyValue_IntValue{IntValue: uint32(v)}})
			}
		}
		m.Properties = ps
	}
}

// metric builds a metric; name "" leaves the name out (data by alias).
func metric(name string, dt DataType, value any, opts ...metricOpt) *sparkplugpb.Payload_Metric {
	m := &sparkplugpb.Payload_Metric{}
	if name != "" {
		m.Name = proto.String(name)
	}
	if dt != TypeUnknown {
		m.Datatype = proto.Uint32(uint32(dt))
	}
	switch v := value.(type) {
	case nil:
	case uint32:
		m.Value = &sparkplugpb.Payload_Metric_IntValue{IntValue: v}
	case uint64:
		m.Value = &sparkplugpb.Payload_Metric_LongValue{LongValue: v}
	case float32:
		m.Value = &sparkplugpb.Payload_Metric_FloatValue{FloatValue: v}
	case float64:
		m.Value = &sparkplugpb.Payload_Metric_DoubleValue{DoubleValue: v}
	case bool:
		m.Value = &sparkplugpb.Payload_Metric_BooleanValue{BooleanValue: v}
	case string:
		m.Value = &sparkplugpb.Payload_Metric_StringValue{StringValue: v}
	case []byte:
		m.Value = &sparkplugpb.Payload_Metric_BytesValue{BytesValue: v}
	case *sparkplugpb.Payload_Template:
		m.Value = &sparkplugpb.Payload_Metric_TemplateValue{TemplateValue: v}
	default:
		panic("metric: unsupported value type")
	}
	for _, o := range opts {
		o(m)
	}
	return m
}

func payload(ts uint64, seq int, metrics ...*sparkplugpb.Payload_Metric) *sparkplugpb.Payload {
	p := &sparkplugpb.Payload{Timestamp: u64(ts), Metrics: metrics}
	if seq >= 0 {
		p.Seq = u64(uint64(seq))
	}
	return p
}

func encode(t testing.TB, p *sparkplugpb.Payload) []byte {
	t.Helper()
	b, err := proto.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// harness drives a worker without a broker.
type harness struct {
	t        testing.TB
	s        *Source
	w        *worker
	out      *collectortest.Output
	now      time.Time
	rebirths []nodeKey
	acks     int
}

func newHarness(t testing.TB, cfg Config) *harness {
	t.Helper()
	if cfg.URL == "" {
		cfg.URL = "tcp://127.0.0.1:1883"
	}
	if cfg.HostID == "" {
		cfg.HostID = "shopfloor"
	}
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, s: s, out: &collectortest.Output{}, now: time.UnixMilli(1764412800000)}
	h.w = newWorker(s, context.Background(), h.out, func(k nodeKey) { h.rebirths = append(h.rebirths, k) })
	h.w.now = func() time.Time { return h.now }
	return h
}

func (h *harness) sendRaw(topicName string, data []byte) {
	h.t.Helper()
	tp, err := parseTopic(topicName)
	if err != nil {
		h.t.Fatalf("topic %s: %v", topicName, err)
	}
	m := &message{topic: topicName, t: tp, payload: data, recv: h.now, ack: func() { h.acks++ }}
	if err := h.w.handle(m); err != nil {
		h.t.Fatalf("handle %s: %v", topicName, err)
	}
}

func (h *harness) send(topicName string, p *sparkplugpb.Payload) {
	h.t.Helper()
	h.sendRaw(topicName, encode(h.t, p))
}

// values returns the emitted values of signal at origin, in order.
func values(out *collectortest.Output, orig, signal string) []collector.Value {
	var vs []collector.Value
	for _, b := range out.Batches() {
		if b.Origin != orig {
			continue
		}
		for _, s := range b.Samples {
			if s.Signal == signal {
				vs = append(vs, s.Value)
			}
		}
	}
	return vs
}

// bornNode sends an NBIRTH (bdSeq 1, seq 0) and a DBIRTH for device d1
// with metrics Temperature (alias 1, Float, °C) and Count (alias 2, Int32).
func bornNode(h *harness) {
	h.t.Helper()
	h.send("spBv1.0/G/NBIRTH/E", payload(1000, 0,
		metric("bdSeq", TypeInt64, uint64(1)),
		metric("Node Control/Rebirth", TypeBoolean, false, withAlias(0)),
		metric("Uptime", TypeInt64, uint64(5), withAlias(10)),
	))
	h.send("spBv1.0/G/DBIRTH/E/d1", payload(1000, 1,
		metric("Temperature", TypeFloat, float32(20.5), withAlias(1), withProps("engUnit", "°C")),
		metric("Count", TypeInt32, uint32(7), withAlias(2)),
	))
}
