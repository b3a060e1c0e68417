package sparkplug

import (
	"context"
	"os"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/noordoostpolder/shopfloor/adapters/sparkplug/sparkplugpb"
	"github.com/noordoostpolder/shopfloor/collector"
)

// FuzzDecodePayload feeds arbitrary bytes to the payload decoder, the value
// conversion of every datatype, and a host that has seen a birth, which must
// never panic, emit a sample without a signal, or leave a message unacked.
func FuzzDecodePayload(f *testing.F) {
	seeds := []*sparkplugpb.Payload{
		payload(1000, 2, metric("", 0, float32(36.2), withAlias(1)), metric("", 0, uint32(0xffffffff), withAlias(2))),
		payload(1000, 2, metric("Temperature", TypeFloat, float32(1), withProps("engUnit", "°C", "Quality", 192))),
		payload(1000, 2, metric("A", TypeBooleanArray, []byte{3, 0, 0, 0, 0xa0}), metric("S", TypeStringArray, []byte("a\x00b\x00"))),
		payload(1000, 2, metric("T", TypeTemplate, &sparkplugpb.Payload_Template{Metrics: []*sparkplugpb.Payload_Metric{metric("x", TypeInt16, uint32(0xfffe))}})),
		payload(1000, 2, metric("", 0, uint64(1), withAlias(2), withTimestamp(5), historical())),
		payload(1000, -1, metric("bdSeq", TypeInt64, uint64(1))),
	}
	for _, p := range seeds {
		b, err := proto.Marshal(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	if golden, err := os.ReadFile("testdata/payloads/every-type.dbirth.bin"); err == nil {
		f.Add(golden)
	} else {
		f.Fatal(err)
	}
	f.Add([]byte{})
	f.Add([]byte{0x12, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		var p sparkplugpb.Payload
		if err := DecodePayload(data, &p); err == nil {
			for _, m := range p.Metrics {
				for dt := TypeUnknown; dt <= TypeDateTimeArray+1; dt++ {
					vals, err := AppendValues(nil, dt, m)
					if err != nil && len(vals) != 0 {
						t.Fatalf("%s: values %v with error %v", dt, vals, err)
					}
					if len(vals) > MaxArrayElements {
						t.Fatalf("%s: %d values", dt, len(vals))
					}
				}
				properties(m.Properties)
			}
		}
		h := newHarness(t, Config{ReorderTimeout: time.Second})
		bornNode(h)
		acks := h.acks
		for _, tp := range []string{"spBv1.0/G/DDATA/E/d1", "spBv1.0/G/DBIRTH/E/d2", "spBv1.0/G/NDATA/E", "spBv1.0/G/NBIRTH/E", "spBv1.0/G/NDEATH/E"} {
			h.sendRaw(tp, data)
		}
		if err := h.w.expire(h.now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if h.acks != acks+5 {
			t.Fatalf("%d of 5 messages acknowledged", h.acks-acks)
		}
		for _, s := range h.out.Samples() {
			if s.Signal == "" && s.Value.Kind() != collector.KindNone {
				t.Fatalf("sample without a signal: %+v", s)
			}
		}
	})
}

// benchOutput normalises like the pipeline and drops the result.
type benchOutput struct {
	n        *collector.Normalizer
	dst      []collector.Sample
	problems []collector.Problem
	samples  int
}

func (o *benchOutput) Emit(_ context.Context, bs ...collector.Batch) error {
	for _, b := range bs {
		o.dst, o.problems = o.n.Normalize(b, o.dst[:0], o.problems[:0])
		o.samples += len(o.dst)
	}
	return nil
}
func (o *benchOutput) Bad(string, error)     {}
func (o *benchOutput) Connected(bool, error) {}

// BenchmarkDDATA measures one DDATA message of a CNC-like device (ten
// metrics by alias) from bytes to canonical samples: protobuf decode, alias
// resolution, value conversion and normalisation.
func BenchmarkDDATA(b *testing.B) {
	scale := 0.001
	norm, err := collector.NewNormalizer(collector.NormalizeConfig{
		Asset: collector.AssetRule{MachineType: "cnc", FromOrigin: []string{"{area}/{line}/{machine}"}},
		Mapping: []collector.MappingRule{
			{Match: "Spindle/Speed", Signal: collector.SignalSpindleSpeed},
			{Match: "Spindle/Load", Signal: collector.SignalSpindleLoad},
			{Match: "Parts/Good", Signal: collector.SignalPartCountGood},
			{Match: "Power", Signal: collector.SignalPower, Unit: "kW"},
			{Match: "Energy", Signal: collector.SignalEnergy, Scale: &scale},
			{Match: "Temperature", Signal: collector.SignalTemperature},
			{Match: "Program", Signal: collector.SignalProgram},
			{Match: "Status", Signal: collector.SignalState, States: map[string]string{"1": "running", "2": "idle"}},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	out := &benchOutput{n: norm}
	h := newHarness(b, Config{})
	h.w.out = out
	names := []struct {
		name string
		dt   DataType
		v    any
	}{
		{"Spindle/Speed", TypeDouble, 12000.0}, {"Spindle/Load", TypeFloat, float32(41.5)},
		{"Parts/Good", TypeUInt32, uint64(1834)}, {"Power", TypeFloat, float32(5.4)},
		{"Energy", TypeInt64, uint64(123456)}, {"Temperature", TypeFloat, float32(36.2)},
		{"Program", TypeString, "O1234"}, {"Status", TypeInt32, uint32(1)},
		{"Axis/X/Pos", TypeDouble, 101.25}, {"Feed/Override", TypeInt16, uint32(100)},
	}
	var birth, data []*sparkplugpb.Payload_Metric
	for i, n := range names {
		birth = append(birth, metric(n.name, n.dt, n.v, withAlias(uint64(i+1))))
		data = append(data, metric("", 0, n.v, withAlias(uint64(i+1))))
	}
	h.send("spBv1.0/plant/NBIRTH/line1", payload(1000, 0, metric("bdSeq", TypeInt64, uint64(0))))
	h.send("spBv1.0/plant/DBIRTH/line1/mill-1", payload(1000, 1, birth...))
	msgs := make([][]byte, 256)
	for seq := range msgs {
		msgs[seq] = encode(b, payload(1764412800000, seq, data...))
	}
	tp, _ := parseTopic("spBv1.0/plant/DDATA/line1/mill-1")
	m := &message{topic: "spBv1.0/plant/DDATA/line1/mill-1", t: tp, recv: time.Now(), ack: func() {}}
	b.ReportAllocs()
	b.ResetTimer()
	seq := 2
	for b.Loop() {
		m.payload = msgs[seq%256]
		if err := h.w.handle(m); err != nil {
			b.Fatal(err)
		}
		seq++
	}
	b.StopTimer()
	if out.samples < b.N*10 || len(out.problems) != 0 {
		b.Fatalf("%d samples for %d messages, problems %v", out.samples, b.N, out.problems)
	}
}
