package sparkplug

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/noordoostpolder/shopfloor/adapters/sparkplug/sparkplugpb"
	"github.com/noordoostpolder/shopfloor/collector"
)

func TestBirthAndDataByAlias(t *testing.T) {
	h := newHarness(t, Config{})
	bornNode(h)
	h.send("spBv1.0/G/DDATA/E/d1", payload(2000, 2,
		metric("", TypeUnknown, float32(36.2), withAlias(1)),
		metric("", TypeUnknown, uint32(8), withAlias(2)),
	))
	h.send("spBv1.0/G/NDATA/E", payload(3000, 3, metric("", TypeUnknown, uint64(6), withAlias(10))))

	if got := values(h.out, "G/E/d1", "Temperature"); !slices.Equal(got, []collector.Value{collector.Float(20.5), collector.Float(36.2)}) {
		t.Errorf("Temperature = %v", got)
	}
	if got := values(h.out, "G/E/d1", "Count"); !slices.Equal(got, []collector.Value{collector.Int(7), collector.Int(8)}) {
		t.Errorf("Count = %v", got)
	}
	if got := values(h.out, "G/E", "Uptime"); !slices.Equal(got, []collector.Value{collector.Int(5), collector.Int(6)}) {
		t.Errorf("Uptime = %v", got)
	}
	for _, b := range h.out.Batches() {
		for _, s := range b.Samples {
			if isProtocol(s.Signal) {
				t.Errorf("protocol metric %s emitted", s.Signal)
			}
			if s.Signal == "Temperature" && s.Unit != "°C" {
				t.Errorf("Temperature unit = %q, want the engUnit of the birth", s.Unit)
			}
		}
	}
	last := h.out.Batches()[2]
	if want := time.UnixMilli(2000); !last.Samples[0].SourceTime.Equal(want) {
		t.Errorf("SourceTime = %v, want the payload timestamp %v", last.Samples[0].SourceTime, want)
	}
	if h.acks != 4 || len(h.rebirths) != 0 || len(h.out.BadCounts()) != 0 {
		t.Errorf("acks %d, rebirths %v, bad %v; want 4, none, none", h.acks, h.rebirths, h.out.BadCounts())
	}
}

func TestSeqReorderedWithinTimeout(t *testing.T) {
	h := newHarness(t, Config{ReorderTimeout: time.Second})
	bornNode(h)
	for _, seq := range []int{3, 2, 4} {
		h.send("spBv1.0/G/DDATA/E/d1", payload(2000, seq, metric("", 0, uint32(seq), withAlias(2))))
	}
	if got := values(h.out, "G/E/d1", "Count"); !slices.Equal(got, []collector.Value{collector.Int(7), collector.Int(2), collector.Int(3), collector.Int(4)}) {
		t.Errorf("Count = %v, want the birth's 7 then 2, 3, 4 in seq order", got)
	}
	if len(h.rebirths) != 0 || len(h.out.BadCounts()) != 0 {
		t.Errorf("rebirths %v, bad %v; want none", h.rebirths, h.out.BadCounts())
	}
}

func TestSeqGapRequestsRebirth(t *testing.T) {
	h := newHarness(t, Config{ReorderTimeout: time.Second})
	bornNode(h)
	h.send("spBv1.0/G/DDATA/E/d1", payload(2000, 3, metric("", 0, uint32(3), withAlias(2))))
	if err := h.w.expire(h.now.Add(500 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if len(h.rebirths) != 0 || h.acks != 2 {
		t.Fatalf("before the timeout: rebirths %v, acks %d; want none, 2 (held)", h.rebirths, h.acks)
	}
	if d, ok := h.w.nextDeadline(); !ok || !d.Equal(h.now.Add(time.Second)) {
		t.Errorf("next deadline %v %v", d, ok)
	}
	if err := h.w.expire(h.now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(h.rebirths, []nodeKey{{"G", "E"}}) || h.out.BadCounts()[ReasonSeqGap] != 1 || h.acks != 3 {
		t.Fatalf("after the timeout: rebirths %v, bad %v, acks %d", h.rebirths, h.out.BadCounts(), h.acks)
	}
	// The held data is kept, and the node counts on from it.
	h.send("spBv1.0/G/DDATA/E/d1", payload(2000, 4, metric("", 0, uint32(4), withAlias(2))))
	if got := values(h.out, "G/E/d1", "Count"); !slices.Equal(got, []collector.Value{collector.Int(7), collector.Int(3), collector.Int(4)}) {
		t.Errorf("Count = %v", got)
	}
	if h.out.BadCounts()[ReasonSeqGap] != 1 {
		t.Errorf("bad %v", h.out.BadCounts())
	}
}

func TestSeqWrapsAround(t *testing.T) {
	h := newHarness(t, Config{})
	h.send("spBv1.0/G/NBIRTH/E", payload(1000, 250, metric("bdSeq", TypeUInt64, uint64(0)), metric("N", TypeInt32, uint32(0), withAlias(1))))
	for i := 1; i <= 10; i++ {
		h.send("spBv1.0/G/NDATA/E", payload(2000, (250+i)%256, metric("", 0, uint32(i), withAlias(1))))
	}
	if got := len(values(h.out, "G/E", "N")); got != 11 {
		t.Errorf("%d values, want 11", got)
	}
	if len(h.out.BadCounts()) != 0 || len(h.rebirths) != 0 {
		t.Errorf("bad %v, rebirths %v", h.out.BadCounts(), h.rebirths)
	}
}

func TestDataBeforeBirthRateLimited(t *testing.T) {
	h := newHarness(t, Config{RebirthMinInterval: 5 * time.Second})
	for range 3 {
		h.send("spBv1.0/G/DDATA/E/d1", payload(2000, 5, metric("", 0, uint32(1), withAlias(2))))
	}
	if len(h.rebirths) != 1 || h.out.BadCounts()[ReasonBeforeBirth] != 3 || h.acks != 3 {
		t.Fatalf("rebirths %v, bad %v, acks %d; want 1 request, 3 before_birth, 3 acks", h.rebirths, h.out.BadCounts(), h.acks)
	}
	h.now = h.now.Add(5 * time.Second)
	h.send("spBv1.0/G/NDATA/E", payload(2000, 6))
	if len(h.rebirths) != 2 {
		t.Errorf("rebirths %v after the interval, want a second request", h.rebirths)
	}
	if len(h.out.Batches()) != 0 {
		t.Errorf("data before birth emitted: %v", h.out.Batches())
	}
}

func TestUnknownDeviceAndAlias(t *testing.T) {
	h := newHarness(t, Config{})
	bornNode(h)
	h.send("spBv1.0/G/DDATA/E/d2", payload(2000, 2, metric("", 0, uint32(1), withAlias(2))))
	if h.out.BadCounts()[ReasonBeforeBirth] != 1 || len(h.rebirths) != 1 {
		t.Fatalf("unknown device: bad %v, rebirths %v", h.out.BadCounts(), h.rebirths)
	}
	h.now = h.now.Add(time.Minute)
	h.send("spBv1.0/G/DDATA/E/d1", payload(2000, 3,
		metric("", 0, uint32(9), withAlias(99)),
		metric("", 0, uint32(10), withAlias(2)),
	))
	if h.out.BadCounts()[ReasonUnknownAlias] != 1 || len(h.rebirths) != 2 {
		t.Fatalf("unknown alias: bad %v, rebirths %v", h.out.BadCounts(), h.rebirths)
	}
	if got := values(h.out, "G/E/d1", "Count"); !slices.Equal(got, []collector.Value{collector.Int(7), collector.Int(10)}) {
		t.Errorf("Count = %v; the known metric of the message must be kept", got)
	}
	for _, b := range h.out.Batches() {
		for _, s := range b.Samples {
			if strings.Contains(s.Signal, "99") {
				t.Errorf("sample under an alias name: %v", s)
			}
		}
	}
}

func TestNodeDeath(t *testing.T) {
	h := newHarness(t, Config{})
	bornNode(h)
	// The will of an older session must not kill the node.
	h.send("spBv1.0/G/NDEATH/E", payload(0, -1, metric("bdSeq", TypeInt64, uint64(0))))
	if n := len(h.out.Batches()); n != 2 {
		t.Fatalf("stale NDEATH emitted something: %d batches", n)
	}
	h.now = h.now.Add(time.Minute)
	h.send("spBv1.0/G/NDEATH/E", payload(0, -1, metric("bdSeq", TypeInt64, uint64(1))))
	for _, orig := range []string{"G/E/d1", "G/E"} {
		if got := values(h.out, orig, "state"); !slices.Equal(got, []collector.Value{collector.String("offline")}) {
			t.Errorf("%s state = %v, want offline", orig, got)
		}
	}
	for _, b := range h.out.Batches()[2:] {
		for _, s := range b.Samples {
			if !s.SourceTime.Equal(h.now) {
				t.Errorf("%s %s stamped %v, want the receive time %v", b.Origin, s.Signal, s.SourceTime, h.now)
			}
			if s.Signal != "state" && (s.Quality != collector.QualityBad || s.Value.Kind() != collector.KindNone) {
				t.Errorf("%s %s = %v %v, want a stale (bad, valueless) sample", b.Origin, s.Signal, s.Value, s.Quality)
			}
		}
	}
	if got := values(h.out, "G/E/d1", "Temperature"); len(got) != 2 {
		t.Errorf("Temperature has %d samples, want the birth's and a stale one", len(got))
	}
	// Data after the death asks for a rebirth.
	h.send("spBv1.0/G/DDATA/E/d1", payload(2000, 2, metric("", 0, uint32(1), withAlias(2))))
	if h.out.BadCounts()[ReasonBeforeBirth] != 1 || len(h.rebirths) != 1 {
		t.Errorf("after death: bad %v, rebirths %v", h.out.BadCounts(), h.rebirths)
	}
}

func TestDeviceDeath(t *testing.T) {
	h := newHarness(t, Config{})
	bornNode(h)
	h.send("spBv1.0/G/DDEATH/E/d1", payload(5000, 2))
	if got := values(h.out, "G/E/d1", "state"); !slices.Equal(got, []collector.Value{collector.String("offline")}) {
		t.Errorf("state = %v", got)
	}
	if got := values(h.out, "G/E", "state"); got != nil {
		t.Errorf("the node went offline with its device: %v", got)
	}
}

func TestHistoricalKeepsItsTimestamp(t *testing.T) {
	h := newHarness(t, Config{})
	bornNode(h)
	h.send("spBv1.0/G/DDATA/E/d1", payload(9000, 2,
		metric("", 0, uint32(3), withAlias(2), withTimestamp(1500), historical()),
		metric("", 0, uint32(9), withAlias(2), withTimestamp(9000)),
	))
	b := h.out.Batches()[2]
	if len(b.Samples) != 2 || !b.Samples[0].SourceTime.Equal(time.UnixMilli(1500)) || !b.Samples[1].SourceTime.Equal(time.UnixMilli(9000)) {
		t.Errorf("samples %+v: the historical one must keep its own, older timestamp", b.Samples)
	}
}

func TestTemplateInstanceFlattened(t *testing.T) {
	h := newHarness(t, Config{})
	h.send("spBv1.0/G/NBIRTH/E", payload(1000, 0, metric("bdSeq", TypeInt64, uint64(1))))
	tmpl := &sparkplugpb.Payload_Template{TemplateRef: proto.String("Motor"), Metrics: []*sparkplugpb.Payload_Metric{
		metric("Speed", TypeDouble, 1450.0, withProps("engUnit", "rpm")),
		metric("Running", TypeBoolean, true),
	}}
	h.send("spBv1.0/G/DBIRTH/E/d1", payload(1000, 1, metric("Motor1", TypeTemplate, tmpl, withAlias(4))))
	h.send("spBv1.0/G/DDATA/E/d1", payload(2000, 2, metric("", 0, &sparkplugpb.Payload_Template{Metrics: []*sparkplugpb.Payload_Metric{
		metric("Speed", 0, 1500.0),
	}}, withAlias(4))))
	if got := values(h.out, "G/E/d1", "Motor1/Speed"); !slices.Equal(got, []collector.Value{collector.Float(1450), collector.Float(1500)}) {
		t.Errorf("Motor1/Speed = %v", got)
	}
	if got := values(h.out, "G/E/d1", "Motor1/Running"); !slices.Equal(got, []collector.Value{collector.Bool(true)}) {
		t.Errorf("Motor1/Running = %v", got)
	}
	last := h.out.Batches()[len(h.out.Batches())-1].Samples[0]
	if last.Unit != "rpm" {
		t.Errorf("member unit %q, want the birth's rpm", last.Unit)
	}
}

func TestBadPayloads(t *testing.T) {
	h := newHarness(t, Config{MaxPayloadBytes: 64})
	bornNode(h)
	h.sendRaw("spBv1.0/G/DDATA/E/d1", []byte("\xff\xff\xff not protobuf"))
	h.sendRaw("spBv1.0/G/DDATA/E/d1", make([]byte, 65))
	h.send("spBv1.0/G/DDATA/E/d1", payload(2000, -1, metric("", 0, uint32(1), withAlias(2))))
	h.send("spBv1.0/G/DDATA/E/d1", payload(2000, 2, metric("", 0, "text", withAlias(2))))
	want := map[string]int{ReasonInvalidProtobuf: 1, ReasonOversized: 1, ReasonInvalidSeq: 1, ReasonBadValue: 1}
	if got := h.out.BadCounts(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("bad %v, want %v", got, want)
	}
	if h.acks != 6 {
		t.Errorf("acks %d, want every message acknowledged", h.acks)
	}
}

func TestUnsupportedTypeCountedOncePerBirth(t *testing.T) {
	h := newHarness(t, Config{})
	h.send("spBv1.0/G/NBIRTH/E", payload(1000, 0,
		metric("bdSeq", TypeInt64, uint64(1)),
		metric("Blob", TypeBytes, []byte{1, 2}, withAlias(1)),
		metric("N", TypeInt8, uint32(0xff), withAlias(2)),
	))
	h.send("spBv1.0/G/NDATA/E", payload(2000, 1, metric("", 0, []byte{3}, withAlias(1)), metric("", 0, uint32(0xfe), withAlias(2))))
	if got := h.out.BadCounts(); got[ReasonUnsupportedType] != 1 || len(got) != 1 {
		t.Errorf("bad %v, want one unsupported_type", got)
	}
	if got := values(h.out, "G/E", "N"); !slices.Equal(got, []collector.Value{collector.Int(-1), collector.Int(-2)}) {
		t.Errorf("N = %v", got)
	}
}

func TestRebirthPayload(t *testing.T) {
	var p sparkplugpb.Payload
	if err := DecodePayload(RebirthPayload(time.UnixMilli(5)), &p); err != nil {
		t.Fatal(err)
	}
	m := p.Metrics[0]
	if m.GetName() != "Node Control/Rebirth" || DataType(m.GetDatatype()) != TypeBoolean || !m.GetBooleanValue() || p.GetTimestamp() != 5 {
		t.Errorf("rebirth payload %v", &p)
	}
}

func TestParseTopic(t *testing.T) {
	good := map[string]topic{
		"spBv1.0/G/NBIRTH/E":    {node: nodeKey{"G", "E"}, kind: typeNBIRTH},
		"spBv1.0/G/DDATA/E/d 1": {node: nodeKey{"G", "E"}, kind: typeDDATA, device: "d 1"},
		"spBv1.0/STATE/host":    {node: nodeKey{edge: "host"}, kind: typeSTATE},
	}
	for s, want := range good {
		if got, err := parseTopic(s); err != nil || got != want {
			t.Errorf("parseTopic(%q) = %+v, %v; want %+v", s, got, err, want)
		}
	}
	for _, s := range []string{"spBv1.0/G/NBIRTH/E/d", "spBv1.0/G/DDATA/E", "spBv1.0/G/FOO/E", "spAv1.0/G/NDATA/E", "spBv1.0//NDATA/E", "spBv1.0/G/DDATA/E/"} {
		if _, err := parseTopic(s); err == nil {
			t.Errorf("parseTopic(%q) accepted", s)
		}
	}
}

func TestBrokerLossMarksOfflineAndAsksForRebirth(t *testing.T) {
	h := newHarness(t, Config{})
	bornNode(h)
	lost := h.now.Add(time.Second)
	h.s.markLost(t.Context(), h.out, lost)
	for _, orig := range []string{"G/E/d1", "G/E"} {
		if got := values(h.out, orig, "state"); !slices.Equal(got, []collector.Value{collector.String("offline")}) {
			t.Errorf("%s state = %v, want offline", orig, got)
		}
	}
	// The births survive the loss: data that resumes still resolves, and
	// the first message asks for a rebirth to bring the live values back.
	h.send("spBv1.0/G/DDATA/E/d1", payload(2000, 2, metric("", 0, uint32(8), withAlias(2))))
	if got := values(h.out, "G/E/d1", "Count"); len(got) != 3 || got[2] != collector.Int(8) {
		t.Errorf("Count = %v", got)
	}
	if len(h.rebirths) != 1 {
		t.Errorf("rebirths %v, want one", h.rebirths)
	}
	// A second loss before any message does not mark them again.
	before := len(h.out.Batches())
	h.s.markLost(t.Context(), h.out, lost)
	h.s.markLost(t.Context(), h.out, lost)
	if n := len(h.out.Batches()) - before; n != 2 {
		t.Errorf("%d offline batches after two losses, want 2 (node and device, once)", n)
	}
}
