package simulator

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/noordoostpolder/shopfloor/adapters/sparkplug/sparkplugpb"
)

// Sparkplug B datatypes the edge node uses (Sparkplug 3.0, 6.4.16).
const (
	spUInt32  = 7
	spUInt64  = 8
	spDouble  = 10
	spBoolean = 11
	spString  = 12
)

// SparkplugEdgeNode publishes the machines as the devices of one Sparkplug
// B edge node: NBIRTH and DBIRTH with names, aliases and datatypes, then
// DDATA by alias with what changed, a sequence number over all of it, an
// NDEATH as its will, and a fresh set of births whenever a host asks for a
// rebirth with NCMD Node Control/Rebirth.
type SparkplugEdgeNode struct {
	client      paho.Client
	group, node string
	machines    map[string]Placed

	mu       sync.Mutex
	bdSeq    uint64
	seq      uint64
	born     map[string]bool           // device births sent since the last NBIRTH
	last     map[string]map[string]any // device -> metric -> last value
	times    map[string]time.Time
	rebirths atomic.Int64
}

// spMetrics are a device's metrics by name, in the order their aliases
// are given.
func spMetrics(kind Kind, v Values) map[string]any {
	out := map[string]any{}
	for name, val := range v.opcua(kind) {
		switch x := val.(type) {
		case []float64:
			for i, f := range x {
				out[fmt.Sprintf("JointTorque_%d", i+1)] = f
			}
		default:
			out[name] = val
		}
	}
	return out
}

func spNames(kind Kind) []string {
	names := make([]string, 0, 16)
	for n := range spMetrics(kind, Values{}) {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// NewSparkplugEdgeNode connects to the broker at url as edge node
// group/node and serves machines as its devices.
func NewSparkplugEdgeNode(url, group, node string, machines []Placed) (*SparkplugEdgeNode, error) {
	e := &SparkplugEdgeNode{group: group, node: node, machines: map[string]Placed{},
		born: map[string]bool{}, last: map[string]map[string]any{}, times: map[string]time.Time{}}
	for _, m := range machines {
		e.machines[m.Name] = m
	}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID("shopfloor-sim-" + group + "-" + node).
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).SetMaxReconnectInterval(5 * time.Second)
	// The will is the NDEATH of the birth about to be sent; its bdSeq is
	// fixed at connect, as Sparkplug requires.
	opts.SetWill(e.topic("NDEATH", ""), string(e.deathPayload()), 1, false)
	opts.SetOnConnectHandler(func(c paho.Client) {
		c.Subscribe(e.topic("NCMD", ""), 1, e.onCommand)
		e.mu.Lock()
		defer e.mu.Unlock()
		e.birthLocked(c)
	})
	e.client = paho.NewClient(opts)
	tok := e.client.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		e.client.Disconnect(0)
		return nil, fmt.Errorf("simulator: Sparkplug edge node: connect to %s: %v", url, tok.Error())
	}
	return e, nil
}

func (e *SparkplugEdgeNode) topic(kind, device string) string {
	t := "spBv1.0/" + e.group + "/" + kind + "/" + e.node
	if device != "" {
		t += "/" + device
	}
	return t
}

func (e *SparkplugEdgeNode) deathPayload() []byte {
	b, _ := proto.Marshal(&sparkplugpb.Payload{Timestamp: proto.Uint64(uint64(time.Now().UnixMilli())),
		Metrics: []*sparkplugpb.Payload_Metric{{Name: proto.String("bdSeq"), Datatype: proto.Uint32(spUInt64),
			Value: &sparkplugpb.Payload_Metric_LongValue{LongValue: e.bdSeq}}}})
	return b
}

// Rebirths is how many rebirth requests the edge node has honoured.
func (e *SparkplugEdgeNode) Rebirths() int64 { return e.rebirths.Load() }

func (e *SparkplugEdgeNode) onCommand(c paho.Client, m paho.Message) {
	var p sparkplugpb.Payload
	if proto.Unmarshal(m.Payload(), &p) != nil {
		return
	}
	for _, met := range p.GetMetrics() {
		if met.GetName() == "Node Control/Rebirth" && met.GetBooleanValue() {
			e.mu.Lock()
			e.birthLocked(c)
			e.mu.Unlock()
			e.rebirths.Add(1)
			return
		}
	}
}

// birthLocked sends NBIRTH and the births of every device with known
// values. Called with mu held.
func (e *SparkplugEdgeNode) birthLocked(c paho.Client) {
	now := uint64(time.Now().UnixMilli())
	e.seq = 0
	nb := &sparkplugpb.Payload{Timestamp: &now, Seq: proto.Uint64(0), Metrics: []*sparkplugpb.Payload_Metric{
		{Name: proto.String("bdSeq"), Datatype: proto.Uint32(spUInt64), Value: &sparkplugpb.Payload_Metric_LongValue{LongValue: e.bdSeq}},
		{Name: proto.String("Node Control/Rebirth"), Datatype: proto.Uint32(spBoolean), Value: &sparkplugpb.Payload_Metric_BooleanValue{BooleanValue: false}},
	}}
	e.publishLocked(c, e.topic("NBIRTH", ""), nb, false)
	e.born = map[string]bool{}
	names := make([]string, 0, len(e.last))
	for d := range e.last {
		names = append(names, d)
	}
	sort.Strings(names)
	for _, d := range names {
		e.deviceBirthLocked(c, d)
	}
}

func (e *SparkplugEdgeNode) deviceBirthLocked(c paho.Client, device string) {
	kind := e.machines[device].Kind
	ts := uint64(e.times[device].UnixMilli())
	p := &sparkplugpb.Payload{Timestamp: &ts}
	for i, name := range spNames(kind) {
		met := metric(e.last[device][name], uint64(i+1), ts)
		met.Name = proto.String(name)
		p.Metrics = append(p.Metrics, met)
	}
	e.publishLocked(c, e.topic("DBIRTH", device), p, true)
	e.born[device] = true
}

func (e *SparkplugEdgeNode) publishLocked(c paho.Client, topic string, p *sparkplugpb.Payload, next bool) {
	if next {
		e.seq = (e.seq + 1) % 256
		p.Seq = proto.Uint64(e.seq)
	}
	b, err := proto.Marshal(p)
	if err != nil {
		return
	}
	c.Publish(topic, 0, false, b)
}

func metric(v any, alias, ts uint64) *sparkplugpb.Payload_Metric {
	m := &sparkplugpb.Payload_Metric{Alias: proto.Uint64(alias), Timestamp: proto.Uint64(ts)}
	switch x := v.(type) {
	case float64:
		m.Datatype, m.Value = proto.Uint32(spDouble), &sparkplugpb.Payload_Metric_DoubleValue{DoubleValue: x}
	case uint32:
		m.Datatype, m.Value = proto.Uint32(spUInt32), &sparkplugpb.Payload_Metric_IntValue{IntValue: x}
	case string:
		m.Datatype, m.Value = proto.Uint32(spString), &sparkplugpb.Payload_Metric_StringValue{StringValue: x}
	}
	return m
}

// Publish sends m's values: its DBIRTH first, then DDATA with the metrics
// that changed. Machines the node does not serve are ignored.
func (e *SparkplugEdgeNode) Publish(_ context.Context, m Placed, v Values) error {
	if _, ok := e.machines[m.Name]; !ok {
		return nil
	}
	vals := spMetrics(m.Kind, v)
	e.mu.Lock()
	defer e.mu.Unlock()
	prev := e.last[m.Name]
	e.last[m.Name], e.times[m.Name] = vals, v.Time
	if !e.client.IsConnectionOpen() {
		return nil // the births go out on reconnect
	}
	if !e.born[m.Name] {
		e.deviceBirthLocked(e.client, m.Name)
		return nil
	}
	ts := uint64(v.Time.UnixMilli())
	p := &sparkplugpb.Payload{Timestamp: &ts}
	for i, name := range spNames(m.Kind) {
		if prev != nil && prev[name] == vals[name] {
			continue
		}
		p.Metrics = append(p.Metrics, metric(vals[name], uint64(i+1), ts))
	}
	if len(p.Metrics) > 0 {
		e.publishLocked(e.client, e.topic("DDATA", m.Name), p, true)
	}
	return nil
}

// Close sends the NDEATH a clean shutdown owes and disconnects.
func (e *SparkplugEdgeNode) Close() {
	e.mu.Lock()
	t := e.client.Publish(e.topic("NDEATH", ""), 1, false, e.deathPayload())
	e.mu.Unlock()
	t.WaitTimeout(2 * time.Second)
	e.client.Disconnect(250)
}
