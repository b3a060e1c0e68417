package sparkplug

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/noordoostpolder/shopfloor/adapters/sparkplug/sparkplugpb"
	"github.com/noordoostpolder/shopfloor/collector"
)

// Reasons passed to collector.Output.Bad, the label of
// shopfloor_source_bad_inputs_total.
const (
	ReasonOversized       = "oversized"        // payload above max_payload_bytes; message refused
	ReasonInvalidProtobuf = "invalid_protobuf" // payload is not a Sparkplug B protobuf; message refused
	ReasonUnexpectedTopic = "unexpected_topic" // topic under the subscription that is not Sparkplug B; message refused
	ReasonInvalidSeq      = "invalid_seq"      // a message that needs a seq has none, or one above 255; message refused
	ReasonBeforeBirth     = "before_birth"     // data or death from a node or device whose birth was not seen; refused, rebirth requested
	ReasonUnknownAlias    = "unknown_alias"    // a metric alias or name not in the birth; that metric refused, rebirth requested
	ReasonSeqGap          = "seq_gap"          // a sequence number stayed missing past reorder_timeout; rebirth requested, data kept
	ReasonBadValue        = "bad_value"        // a value that does not fit its datatype; that metric refused
	ReasonUnsupportedType = "unsupported_type" // a birth metric of a type with no sample form (DataSet, Bytes, File); counted once per birth
	ReasonInvalidBirth    = "invalid_birth"    // a birth metric without a name; that metric refused
)

// maxHeld bounds the messages held per edge node while waiting for a
// missing sequence number; beyond it the gap is declared at once, so a
// node that lost a message while sending fast cannot pile up memory.
const maxHeld = 64

// maxTemplateDepth bounds template nesting when flattening instances.
const maxTemplateDepth = 8

// metricInfo is what a birth certificate says about one metric.
type metricInfo struct {
	name     string
	datatype DataType
	unit     string
	// skip marks metrics that never become samples: the protocol's own
	// (bdSeq, Node Control/*) and types without a sample form.
	skip bool
}

// metricSet is the birth certificate of one edge node or device.
type metricSet struct {
	byAlias map[uint64]*metricInfo
	byName  map[string]*metricInfo
}

func (s *metricSet) resolve(m *sparkplugpb.Payload_Metric) *metricInfo {
	if m.Name != nil && *m.Name != "" {
		return s.byName[*m.Name]
	}
	if m.Alias != nil {
		return s.byAlias[*m.Alias]
	}
	return nil
}

type device struct {
	origin  string // cached: building it per message would allocate
	metrics metricSet
	born    bool
}

// node is everything the host knows of one edge node. Only the worker
// its key is sharded to touches it while a Run is active, and Run's own
// goroutine only after the workers stopped, so it needs no lock.
type node struct {
	key      nodeKey
	origin   string
	born     bool
	bdSeq    int64
	hasBdSeq bool
	// next is the seq the next sequenced message should carry.
	next    uint8
	metrics metricSet
	devices map[string]*device
	// pending holds messages that arrived ahead of next, by seq, until
	// the missing ones arrive or gapSince+reorder_timeout passes.
	pending     map[uint8]*message
	gapSince    time.Time
	lastRebirth time.Time
	// lost is set when the broker connection dropped after the birth:
	// the host marked the machines offline and asks for a rebirth at the
	// node's next message, which brings their live values back.
	lost bool
}

// message is one Sparkplug publish on its way through a worker.
type message struct {
	topic   string
	t       topic
	payload []byte
	skipped int // the size of a payload too large to keep, not read
	recv    time.Time
	ack     func()
	pb      *sparkplugpb.Payload
	seq     uint8
}

// worker processes the messages of the edge nodes sharded to it, in
// order per node.
type worker struct {
	s   *Source
	out collector.Output
	ctx context.Context
	// rebirth publishes NCMD Node Control/Rebirth to a node; the worker
	// applies the rate limit.
	rebirth func(nodeKey)
	now     func() time.Time
	held    map[*node]struct{}
	spare   *sparkplugpb.Payload
	buf     []collector.Sample
	vals    []collector.Value
	// batch, set while the worker loops, holds its emits and acks until
	// the messages waiting in the shard are all handled.
	batch *batch
}

// ack acknowledges m, or holds the acknowledgement for the batch.
func (w *worker) ack(m *message) {
	if w.batch != nil {
		w.batch.acks = append(w.batch.acks, m.ack)
		return
	}
	m.ack()
}

func newWorker(s *Source, ctx context.Context, out collector.Output, rebirth func(nodeKey)) *worker {
	return &worker{s: s, out: out, ctx: ctx, rebirth: rebirth, now: time.Now, held: map[*node]struct{}{}, spare: new(sparkplugpb.Payload)}
}

// loop handles messages and reorder deadlines until ctx ends or an Emit
// fails, which it reports through stop.
func (w *worker) loop(in <-chan *message, stop context.CancelCauseFunc) {
	w.batch = &batch{out: w.out}
	w.out = w.batch
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var expired <-chan time.Time
		timer.Stop()
		if d, ok := w.nextDeadline(); ok {
			timer.Reset(time.Until(d))
			expired = timer.C
		}
		var err error
		select {
		case <-w.ctx.Done():
			return
		case m := <-in:
			err = w.handle(m)
			// Then whatever else is waiting, written together.
		drain:
			for n := 1; err == nil && n < maxBatch; n++ {
				select {
				case m := <-in:
					err = w.handle(m)
				default:
					break drain
				}
			}
		case now := <-expired:
			err = w.expire(now)
		}
		if err == nil {
			err = w.batch.flush(w.ctx)
		}
		if err != nil {
			if w.ctx.Err() == nil {
				stop(fmt.Errorf("%w: %w", errEmitRefused, err))
			}
			return
		}
	}
}

// handle processes one message. It returns an error only when Emit
// failed; the message is then not acknowledged and the run ends.
func (w *worker) handle(m *message) error {
	if size := max(len(m.payload), m.skipped); size > w.s.cfg.MaxPayloadBytes {
		w.out.Bad(ReasonOversized, fmt.Errorf("topic %s: payload of %d bytes exceeds max_payload_bytes %d", m.topic, size, w.s.cfg.MaxPayloadBytes))
		w.ack(m)
		return nil
	}
	if m.t.kind == typeNCMD || m.t.kind == typeDCMD {
		// Commands are for edge nodes, ours included; nothing to read.
		w.ack(m)
		return nil
	}
	if err := DecodePayload(m.payload, w.spare); err != nil {
		w.out.Bad(ReasonInvalidProtobuf, fmt.Errorf("topic %s: %w", m.topic, err))
		w.ack(m)
		return nil
	}
	m.pb = w.spare
	switch m.t.kind {
	case typeNBIRTH:
		return w.nbirth(m)
	case typeNDEATH:
		return w.ndeath(m)
	}
	return w.sequenced(m)
}

func (w *worker) nbirth(m *message) error {
	n := w.s.node(m.t.node, true)
	w.dropPending(n, "a new NBIRTH started another session")
	n.metrics = w.birthSet(m)
	n.bdSeq, n.hasBdSeq = bdSeqOf(m.pb)
	n.born, n.lost = true, false
	for _, d := range n.devices {
		// A new node session voids its devices' births; they follow.
		d.born = false
	}
	// Sparkplug 3.0 lets NBIRTH carry any seq; the node counts on from it.
	n.next = uint8(m.pb.GetSeq()) + 1
	w.s.log.Debug("edge node born", "group", n.key.group, "edge_node", n.key.edge, "metrics", len(n.metrics.byName), "bdseq", n.bdSeq)
	return w.emitMetrics(n, m, &n.metrics, n.origin)
}

func (w *worker) ndeath(m *message) error {
	n := w.s.node(m.t.node, false)
	if n == nil || !n.born {
		w.ack(m)
		return nil
	}
	if bd, ok := bdSeqOf(m.pb); ok && n.hasBdSeq && bd != n.bdSeq {
		// The will of an older session, delivered late: the node is
		// alive in the session its newer birth started.
		w.s.log.Debug("ignoring NDEATH of an older session", "group", n.key.group, "edge_node", n.key.edge, "bdseq", bd, "current", n.bdSeq)
		w.ack(m)
		return nil
	}
	w.dropPending(n, "the edge node died")
	n.born = false
	if err := w.offline(n, m.recv); err != nil {
		return err
	}
	w.ack(m)
	return nil
}

// offline emits, for the node and each of its live devices, a stale
// (bad, valueless) sample per metric and a state sample "offline", all
// stamped t.
func (w *worker) offline(n *node, t time.Time) error {
	for _, id := range sortedKeys(n.devices) {
		d := n.devices[id]
		if !d.born {
			continue
		}
		d.born = false
		if err := w.emitOffline(d.origin, &d.metrics, t); err != nil {
			return err
		}
	}
	return w.emitOffline(n.origin, &n.metrics, t)
}

func (w *worker) emitOffline(orig string, set *metricSet, t time.Time) error {
	samples := w.buf[:0]
	for _, name := range sortedKeys(set.byName) {
		info := set.byName[name]
		if info.skip || info.datatype == TypeTemplate || info.datatype.IsArray() {
			continue
		}
		samples = append(samples, collector.Sample{Signal: name, Quality: collector.QualityBad, SourceTime: t, ReceiveTime: t})
	}
	samples = append(samples, collector.Sample{Signal: collector.SignalState, Value: collector.String(collector.StateOffline), SourceTime: t, ReceiveTime: t})
	w.buf = samples
	if err := w.out.Emit(w.ctx, collector.Batch{Origin: orig, Samples: samples}); err != nil {
		return fmt.Errorf("origin %s: offline: %w", orig, err)
	}
	return nil
}

// sequenced takes DBIRTH, DDEATH, NDATA and DDATA, whose seq must follow
// on from the node's previous message.
func (w *worker) sequenced(m *message) error {
	n := w.s.node(m.t.node, true)
	if !n.born {
		return w.beforeBirth(n, m, "edge node")
	}
	if n.lost {
		n.lost = false
		w.requestRebirth(n, "the broker connection was lost after its birth")
	}
	if m.pb.Seq == nil || *m.pb.Seq > 255 {
		w.out.Bad(ReasonInvalidSeq, fmt.Errorf("topic %s: seq %v missing or above 255", m.topic, m.pb.Seq))
		w.ack(m)
		return nil
	}
	m.seq = uint8(*m.pb.Seq)
	if m.seq != n.next {
		_, dup := n.pending[m.seq]
		if !dup && w.s.cfg.ReorderTimeout > 0 && len(n.pending) < maxHeld {
			if n.pending == nil {
				n.pending = map[uint8]*message{}
			}
			n.pending[m.seq] = m
			if n.gapSince.IsZero() {
				n.gapSince = m.recv
			}
			w.held[n] = struct{}{}
			// m keeps this payload until it is applied.
			w.spare = new(sparkplugpb.Payload)
			return nil
		}
		if err := w.gap(n); err != nil {
			return err
		}
		if m.seq != n.next {
			w.out.Bad(ReasonSeqGap, fmt.Errorf("topic %s: edge node %s/%s: seq %d, expected %d", m.topic, n.key.group, n.key.edge, m.seq, n.next))
			w.requestRebirth(n, "sequence gap")
		}
	}
	if err := w.apply(n, m); err != nil {
		return err
	}
	n.next = m.seq + 1
	return w.drain(n)
}

// drain applies the held messages that now follow on.
func (w *worker) drain(n *node) error {
	for len(n.pending) > 0 {
		m, ok := n.pending[n.next]
		if !ok {
			return nil
		}
		delete(n.pending, n.next)
		if len(n.pending) == 0 {
			n.gapSince = time.Time{}
			delete(w.held, n)
		}
		if err := w.apply(n, m); err != nil {
			return err
		}
		n.next = m.seq + 1
	}
	return nil
}

// gap gives up waiting: it counts the gap, asks for a rebirth, and applies
// the held messages in sequence order, since their aliases are still the
// birth's.
func (w *worker) gap(n *node) error {
	if len(n.pending) == 0 {
		return nil
	}
	held := make([]*message, 0, len(n.pending))
	for _, m := range n.pending {
		held = append(held, m)
	}
	next := n.next
	sort.Slice(held, func(i, j int) bool { return held[i].seq-next < held[j].seq-next })
	w.out.Bad(ReasonSeqGap, fmt.Errorf("edge node %s/%s: seq %d missing after %s (next held seq %d)", n.key.group, n.key.edge, next, w.s.cfg.ReorderTimeout, held[0].seq))
	w.requestRebirth(n, "sequence gap")
	clear(n.pending)
	n.gapSince = time.Time{}
	delete(w.held, n)
	for _, m := range held {
		if err := w.apply(n, m); err != nil {
			// This and the rest stay unacknowledged; the run ends.
			return err
		}
		n.next = m.seq + 1
	}
	return nil
}

// expire declares the gaps whose reorder timeout passed by now.
func (w *worker) expire(now time.Time) error {
	for n := range w.held {
		if !n.gapSince.IsZero() && now.Sub(n.gapSince) >= w.s.cfg.ReorderTimeout {
			if err := w.gap(n); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *worker) nextDeadline() (time.Time, bool) {
	var first time.Time
	for n := range w.held {
		if d := n.gapSince.Add(w.s.cfg.ReorderTimeout); first.IsZero() || d.Before(first) {
			first = d
		}
	}
	return first, !first.IsZero()
}

// dropPending acknowledges held messages that can no longer be applied.
func (w *worker) dropPending(n *node, why string) {
	if len(n.pending) == 0 {
		return
	}
	w.out.Bad(ReasonSeqGap, fmt.Errorf("edge node %s/%s: %d messages waiting for seq %d dropped: %s", n.key.group, n.key.edge, len(n.pending), n.next, why))
	for _, m := range n.pending {
		w.ack(m)
	}
	clear(n.pending)
	n.gapSince = time.Time{}
	delete(w.held, n)
}

// apply processes a sequenced message whose turn it is.
func (w *worker) apply(n *node, m *message) error {
	switch m.t.kind {
	case typeDBIRTH:
		if n.devices == nil {
			n.devices = map[string]*device{}
		}
		d := n.devices[m.t.device]
		if d == nil {
			d = &device{origin: origin(n.key, m.t.device)}
			n.devices[m.t.device] = d
		}
		d.metrics = w.birthSet(m)
		d.born = true
		return w.emitMetrics(n, m, &d.metrics, d.origin)
	case typeNDATA:
		return w.emitMetrics(n, m, &n.metrics, n.origin)
	case typeDDATA:
		d := n.devices[m.t.device]
		if d == nil || !d.born {
			return w.beforeBirth(n, m, "device")
		}
		return w.emitMetrics(n, m, &d.metrics, d.origin)
	case typeDDEATH:
		d := n.devices[m.t.device]
		if d == nil || !d.born {
			w.ack(m)
			return nil
		}
		d.born = false
		if err := w.emitOffline(d.origin, &d.metrics, m.recv); err != nil {
			return err
		}
	}
	w.ack(m)
	return nil
}

func (w *worker) beforeBirth(n *node, m *message, what string) error {
	w.out.Bad(ReasonBeforeBirth, fmt.Errorf("topic %s: %s before the %s's birth certificate; rebirth requested", m.topic, m.t.kind, what))
	w.requestRebirth(n, m.t.kind+" before birth")
	w.ack(m)
	return nil
}

func (w *worker) requestRebirth(n *node, why string) {
	now := w.now()
	if !n.lastRebirth.IsZero() && now.Sub(n.lastRebirth) < w.s.cfg.RebirthMinInterval {
		return
	}
	n.lastRebirth = now
	w.s.log.Info("requesting rebirth", "group", n.key.group, "edge_node", n.key.edge, "reason", why)
	w.rebirth(n.key)
}

// isProtocol reports metrics that steer the Sparkplug session rather than
// describe a machine.
func isProtocol(name string) bool {
	return name == "bdSeq" || strings.HasPrefix(name, "Node Control/") || strings.HasPrefix(name, "Device Control/")
}

// birthSet reads a birth certificate.
func (w *worker) birthSet(m *message) metricSet {
	set := metricSet{byAlias: map[uint64]*metricInfo{}, byName: map[string]*metricInfo{}}
	for _, pm := range m.pb.Metrics {
		name := pm.GetName()
		if name == "" {
			w.out.Bad(ReasonInvalidBirth, fmt.Errorf("topic %s: birth metric (alias %d) without a name", m.topic, pm.GetAlias()))
			continue
		}
		dt := DataType(pm.GetDatatype())
		unit, _, _ := properties(pm.Properties)
		info := &metricInfo{name: name, datatype: dt, unit: unit, skip: isProtocol(name)}
		switch {
		case info.skip:
		case dt == TypeTemplate:
			tv := pm.GetTemplateValue()
			if tv == nil || tv.GetIsDefinition() || strings.HasPrefix(name, "_types_/") {
				info.skip = true
				break
			}
			registerMembers(&set, name, tv, 0)
		case !dt.supported():
			info.skip = true
			w.out.Bad(ReasonUnsupportedType, fmt.Errorf("topic %s, metric %s: datatype %s has no sample form; left out", m.topic, name, dt))
		}
		set.byName[name] = info
		if pm.Alias != nil {
			set.byAlias[*pm.Alias] = info
		}
	}
	return set
}

// registerMembers records a template instance's members under
// "<instance>/<member>", so data that names a member without its datatype
// still decodes.
func registerMembers(set *metricSet, prefix string, tv *sparkplugpb.Payload_Template, depth int) {
	if depth >= maxTemplateDepth {
		return
	}
	for _, mm := range tv.GetMetrics() {
		name := prefix + "/" + mm.GetName()
		dt := DataType(mm.GetDatatype())
		unit, _, _ := properties(mm.Properties)
		set.byName[name] = &metricInfo{name: name, datatype: dt, unit: unit, skip: dt != TypeTemplate && !dt.supported()}
		if dt == TypeTemplate {
			set.byName[name].skip = true
			registerMembers(set, name, mm.GetTemplateValue(), depth+1)
		}
	}
}

// emitMetrics turns a birth's or data message's metrics into one batch,
// emits it, and acknowledges the message once the collector took it.
func (w *worker) emitMetrics(n *node, m *message, set *metricSet, orig string) error {
	samples := w.buf[:0]
	ts := m.recv
	if m.pb.Timestamp != nil {
		ts = time.UnixMilli(int64(*m.pb.Timestamp))
	}
	unknown := false
	for _, pm := range m.pb.Metrics {
		info := set.resolve(pm)
		if info == nil {
			unknown = true
			w.out.Bad(ReasonUnknownAlias, fmt.Errorf("topic %s: metric (name %q, alias %d) is not in the birth certificate", m.topic, pm.GetName(), pm.GetAlias()))
			continue
		}
		if info.skip {
			continue
		}
		samples = w.appendMetric(samples, m, set, info.name, info.datatype, info.unit, pm, ts, 0)
	}
	if unknown {
		w.requestRebirth(n, "unknown metric alias")
	}
	w.buf = samples
	if len(samples) > 0 {
		if err := w.out.Emit(w.ctx, collector.Batch{Origin: orig, Samples: samples}); err != nil {
			return fmt.Errorf("topic %s: %w", m.topic, err)
		}
	}
	w.ack(m)
	return nil
}

// appendMetric appends the samples of one metric: one for a scalar, one
// per element for an array ("<name>/<index>"), one per member for a
// template instance ("<name>/<member>").
//
// Historical values (is_historical) carry the time they were measured,
// which is earlier than the live value's, so they add points to the past
// and never replace the current one.
func (w *worker) appendMetric(dst []collector.Sample, m *message, set *metricSet, name string, dt DataType, unit string, pm *sparkplugpb.Payload_Metric, ts time.Time, depth int) []collector.Sample {
	if pm.Datatype != nil && *pm.Datatype != 0 {
		// The value is encoded as the message says, should it ever
		// differ from the birth.
		dt = DataType(*pm.Datatype)
	}
	if pm.Timestamp != nil {
		ts = time.UnixMilli(int64(*pm.Timestamp))
	}
	u, q, _ := properties(pm.Properties)
	if u == "" {
		u = unit
	}
	s := collector.Sample{Signal: name, Unit: u, Quality: q, SourceTime: ts, ReceiveTime: m.recv}
	if pm.GetIsNull() {
		s.Quality = collector.QualityBad
		return append(dst, s)
	}
	if dt == TypeTemplate {
		tv := pm.GetTemplateValue()
		if tv == nil || tv.GetIsDefinition() || depth >= maxTemplateDepth {
			return dst
		}
		for _, mm := range tv.GetMetrics() {
			member := name + "/" + mm.GetName()
			mdt, munit := DataType(0), ""
			if info := set.byName[member]; info != nil {
				mdt, munit = info.datatype, info.unit
			}
			dst = w.appendMetric(dst, m, set, member, mdt, munit, mm, ts, depth+1)
		}
		return dst
	}
	if !dt.supported() {
		return dst
	}
	vals, err := AppendValues(w.vals[:0], dt, pm)
	w.vals = vals
	if err != nil {
		w.out.Bad(ReasonBadValue, fmt.Errorf("topic %s, metric %s: %w", m.topic, name, err))
		return dst
	}
	if !dt.IsArray() {
		s.Value = vals[0]
		return append(dst, s)
	}
	for i, v := range vals {
		s.Signal = name + "/" + strconv.Itoa(i)
		s.Value = v
		dst = append(dst, s)
	}
	return dst
}

// bdSeqOf reads the bdSeq metric of an NBIRTH or NDEATH.
func bdSeqOf(p *sparkplugpb.Payload) (int64, bool) {
	for _, m := range p.Metrics {
		if m.GetName() == "bdSeq" {
			if u, ok := intField(m); ok {
				return int64(u), true
			}
		}
	}
	return 0, false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
