package sparkplug

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/noordoostpolder/shopfloor/adapters/mqtt"
	"github.com/noordoostpolder/shopfloor/adapters/sparkplug/sparkplugpb"
	"github.com/noordoostpolder/shopfloor/collector"
)

// shardDepth bounds each worker's queue; when the collector blocks, the
// queues fill and paho stops reading, so the broker holds the rest.
const shardDepth = 64

// disconnectQuiesce is how long a clean disconnect waits for queued
// packets, in milliseconds.
const disconnectQuiesce = 250

// subackFailure is the SUBACK return code for a refused subscription.
const subackFailure = 0x80

// errEmitRefused is the cause of a run ended by an Emit error that was not
// the context ending.
var errEmitRefused = errors.New("the collector refused a batch")

// Source is a Sparkplug B host application. Its birth caches (metric
// names, aliases and datatypes of every edge node and device) live in the
// Source, not in one Run, so data that arrives after a reconnect still
// resolves.
type Source struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	nodes map[nodeKey]*node
}

var _ collector.Source = (*Source)(nil)

// New checks cfg (after applying its defaults) and the TLS files it names.
// A nil logger discards.
func New(cfg Config, logger *slog.Logger) (*Source, error) {
	cfg.Groups = append([]string(nil), cfg.Groups...)
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := cfg.tlsConfig(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if tc, _ := cfg.tlsConfig(); tc != nil && tc.InsecureSkipVerify {
		logger.Warn("tls.insecure_skip_verify is on: the broker's certificate is not checked", "url", cfg.URL)
	}
	return &Source{cfg: cfg, log: logger, nodes: map[nodeKey]*node{}}, nil
}

// node returns the state of an edge node, creating it when asked.
func (s *Source) node(k nodeKey, create bool) *node {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[k]
	if n == nil && create {
		n = &node{key: k, origin: origin(k, "")}
		s.nodes[k] = n
	}
	return n
}

// hostState is the JSON payload of a Sparkplug 3.0 STATE message.
type hostState struct {
	Online    bool  `json:"online"`
	Timestamp int64 `json:"timestamp"`
}

func statePayload(online bool, ts int64) []byte {
	b, _ := json.Marshal(hostState{Online: online, Timestamp: ts})
	return b
}

// RebirthPayload is the NCMD payload that asks an edge node to publish its
// births again: the metric "Node Control/Rebirth" set to true.
func RebirthPayload(now time.Time) []byte {
	ts := uint64(now.UnixMilli())
	b, _ := proto.Marshal(&sparkplugpb.Payload{
		Timestamp: &ts,
		Metrics: []*sparkplugpb.Payload_Metric{{
			Name:      proto.String("Node Control/Rebirth"),
			Timestamp: &ts,
			Datatype:  proto.Uint32(uint32(TypeBoolean)),
			Value:     &sparkplugpb.Payload_Metric_BooleanValue{BooleanValue: true},
		}},
	})
	return b
}

// Run connects as the host application, publishes its STATE birth and
// delivers the edge nodes' data until ctx ends (it then publishes its
// STATE death, disconnects and returns nil) or the connection breaks (it
// marks every edge node's machines offline and returns an error). It
// never reconnects by itself: the supervisor calls Run again.
func (s *Source) Run(ctx context.Context, out collector.Output) error {
	if ctx.Err() != nil {
		return nil
	}
	broker := "sparkplug broker " + s.cfg.URL
	tlsCfg, err := s.cfg.tlsConfig()
	if err != nil {
		err = fmt.Errorf("%s: %w", broker, err)
		out.Connected(false, err)
		return err
	}
	runCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	defer s.clearPending()

	// One timestamp for the will and the birth of this session, as
	// Sparkplug 3.0 requires, so a consumer can tell which death belongs
	// to which birth.
	ts := time.Now().UnixMilli()
	stateTopic := s.cfg.stateTopic()
	var closing atomic.Bool

	var client paho.Client
	rebirth := func(k nodeKey) {
		// QoS 0 as Sparkplug prescribes for commands; not waited for,
		// because a worker must not block on the network.
		client.Publish(Namespace+"/"+k.group+"/"+typeNCMD+"/"+k.edge, 0, false, RebirthPayload(time.Now()))
	}
	shards := make([]chan *message, s.cfg.Workers)
	var workers sync.WaitGroup
	for i := range shards {
		shards[i] = make(chan *message, shardDepth)
		w := newWorker(s, runCtx, out, rebirth)
		workers.Go(func() { w.loop(shards[i], stop) })
	}
	lost := make(chan error, 1)
	handle := func(c paho.Client, m paho.Message) {
		t, err := parseTopic(m.Topic())
		if err != nil {
			out.Bad(ReasonUnexpectedTopic, fmt.Errorf("topic %s: %w", m.Topic(), err))
			m.Ack()
			return
		}
		if t.kind == typeSTATE {
			if t.node.edge == s.cfg.HostID {
				s.ownState(c, m.Payload(), stateTopic, ts, &closing)
			}
			m.Ack()
			return
		}
		msg := &message{topic: m.Topic(), t: t, payload: m.Payload(), skipped: mqtt.PayloadSkipped(m), recv: time.Now(), ack: m.Ack}
		mqtt.Enqueue(runCtx, c, shards[shardOf(t.node, len(shards))], msg)
	}

	opts := paho.NewClientOptions().
		AddBroker(s.cfg.URL).
		SetClientID(s.cfg.ClientID).
		SetUsername(s.cfg.Username).
		SetPassword(s.cfg.Password.Reveal()).
		SetCleanSession(!s.cfg.PersistentSession).
		SetProtocolVersion(4).
		SetKeepAlive(s.cfg.KeepAlive).
		SetConnectTimeout(s.cfg.ConnectTimeout).
		SetWriteTimeout(s.cfg.ConnectTimeout).
		// The supervisor owns reconnecting (see the mqtt source).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetAutoAckDisabled(true).
		SetOrderMatters(true).
		// Messages read before paho, paced and buffered reads, coalesced
		// PUBACKs, and no store: see the mqtt source. paho delivers only
		// what the connection leaves it (QoS 2), to the same handler.
		SetCustomOpenConnectionFn(mqtt.OpenConnectionTaking(s.cfg.MaxPayloadBytes, func(m paho.Message) { handle(client, m) })).
		SetStore(mqtt.NoStore{}).
		SetBinaryWill(stateTopic, statePayload(false, ts), 1, true).
		SetDefaultPublishHandler(handle).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	if tlsCfg != nil {
		opts.SetTLSConfig(tlsCfg)
	}
	client = paho.NewClient(opts)

	// finish stops the workers before disconnecting, so the acks of the
	// messages they completed go out ahead of the DISCONNECT.
	finish := func(err error, connected, clean bool) error {
		closing.Store(true)
		stop(err)
		workers.Wait()
		if connected {
			if clean {
				s.publishDeath(client, stateTopic, ts)
			}
			client.Disconnect(disconnectQuiesce)
		}
		out.Connected(false, err)
		return err
	}

	s.log.Debug("connecting", "url", s.cfg.URL, "client_id", s.cfg.ClientID, "host_id", s.cfg.HostID)
	tok := client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		go func() {
			tok.Wait()
			client.Disconnect(0)
		}()
		return finish(nil, false, false)
	}
	if err := tok.Error(); err != nil {
		return finish(fmt.Errorf("%s: connect: %w", broker, err), false, false)
	}
	if err := s.subscribe(runCtx, client, lost); err != nil {
		if ctx.Err() != nil {
			return finish(nil, true, true)
		}
		return finish(fmt.Errorf("%s: %w", broker, err), true, false)
	}
	if err := s.waitToken(runCtx, client.Publish(stateTopic, 1, true, statePayload(true, ts)), lost, "publish STATE birth"); err != nil {
		if ctx.Err() != nil {
			return finish(nil, true, true)
		}
		return finish(fmt.Errorf("%s: %w", broker, err), true, false)
	}
	out.Connected(true, nil)
	s.log.Info("host application online", "url", s.cfg.URL, "host_id", s.cfg.HostID, "state_topic", stateTopic)

	select {
	case <-ctx.Done():
		return finish(nil, true, true)
	case err := <-lost:
		err = finish(fmt.Errorf("%s: connection lost: %w", broker, err), false, false)
		s.markLost(ctx, out, time.Now())
		return err
	case <-runCtx.Done():
		return finish(fmt.Errorf("%s: %w", broker, context.Cause(runCtx)), true, true)
	}
}

// ownState puts the host back online when its own STATE topic says
// offline while it is connected: a stale retained will, or another
// client that took over the id for a moment.
func (s *Source) ownState(c paho.Client, payload []byte, topic string, ts int64, closing *atomic.Bool) {
	var st hostState
	if err := json.Unmarshal(payload, &st); err != nil || st.Online || closing.Load() {
		return
	}
	s.log.Info("own STATE seen offline; publishing the birth again", "topic", topic, "their_timestamp", st.Timestamp)
	// Not waited for: this runs on the goroutine that reads the
	// connection, which the acknowledgement has to come through.
	c.Publish(topic, 1, true, statePayload(true, ts))
}

// publishDeath marks the host offline before a clean disconnect (the
// broker publishes the will only when the connection breaks).
func (s *Source) publishDeath(c paho.Client, topic string, ts int64) {
	tok := c.Publish(topic, 1, true, statePayload(false, ts))
	if !tok.WaitTimeout(s.cfg.ConnectTimeout) {
		s.log.Warn("STATE death not acknowledged in time", "topic", topic)
	} else if err := tok.Error(); err != nil {
		s.log.Warn("STATE death not published", "topic", topic, "err", err)
	}
}

func (s *Source) waitToken(ctx context.Context, tok paho.Token, lost <-chan error, what string) error {
	timer := time.NewTimer(s.cfg.ConnectTimeout)
	defer timer.Stop()
	select {
	case <-tok.Done():
	case err := <-lost:
		return fmt.Errorf("connection lost during %s: %w", what, err)
	case <-timer.C:
		return fmt.Errorf("%s: no acknowledgement within %s", what, s.cfg.ConnectTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// subscribe subscribes to the Sparkplug namespace (or the configured
// groups) and the host's own STATE topic, and checks every return code.
func (s *Source) subscribe(ctx context.Context, client paho.Client, lost <-chan error) error {
	filters := s.cfg.filters()
	tok := client.SubscribeMultiple(filters, nil)
	if err := s.waitToken(ctx, tok, lost, "subscribe"); err != nil {
		return err
	}
	st, ok := tok.(*paho.SubscribeToken)
	if !ok {
		return fmt.Errorf("subscribe: unexpected token type %T", tok)
	}
	granted := st.Result()
	var refused []string
	for f := range filters {
		if code, ok := granted[f]; !ok || code == subackFailure {
			refused = append(refused, f)
		}
	}
	if len(refused) > 0 {
		sort.Strings(refused)
		return fmt.Errorf("subscribe: the broker refused topic %s (SUBACK 0x80; check its ACL)", strings.Join(refused, ", "))
	}
	return nil
}

// markLost marks the machines of every live edge node offline after the
// broker connection broke, stamped t. The nodes keep their births, so data
// that resumes after a reconnect still resolves; their next message asks
// for a rebirth, which restores the live values.
func (s *Source) markLost(ctx context.Context, out collector.Output, t time.Time) {
	if ctx.Err() != nil {
		return
	}
	w := newWorker(s, ctx, out, func(nodeKey) {})
	s.mu.Lock()
	nodes := make([]*node, 0, len(s.nodes))
	for _, n := range s.nodes {
		if n.born && !n.lost {
			nodes = append(nodes, n)
		}
	}
	s.mu.Unlock()
	for _, n := range nodes {
		n.lost = true
		// Devices stay born for the resumed session; offline flips
		// them, so restore after.
		var live []*device
		for _, d := range n.devices {
			if d.born {
				live = append(live, d)
			}
		}
		err := w.offline(n, t)
		for _, d := range live {
			d.born = true
		}
		if err != nil {
			s.log.Warn("could not mark edge node offline", "group", n.key.group, "edge_node", n.key.edge, "err", err)
			return
		}
	}
}

// clearPending forgets messages held for reordering when a run ends: they
// belong to a connection that is gone (a persistent session redelivers
// them).
func (s *Source) clearPending() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.nodes {
		clear(n.pending)
		n.gapSince = time.Time{}
	}
}

// shardOf picks a worker by the FNV-1a hash of the edge node, so one
// node's messages, whose seq must be read in order, share a worker.
func shardOf(k nodeKey, n int) int {
	const (
		offset32 = 2166136261
		prime32  = 16777619
	)
	h := uint32(offset32)
	for _, s := range [2]string{k.group, k.edge} {
		for i := 0; i < len(s); i++ {
			h ^= uint32(s[i])
			h *= prime32
		}
		h ^= '/'
		h *= prime32
	}
	return int(h % uint32(n))
}
