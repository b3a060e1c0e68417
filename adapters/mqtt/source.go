package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/noordoostpolder/shopfloor/collector"
)

// shardDepth bounds each worker's queue. When the collector's queue is full
// the workers block in Emit, these fill up, and then paho's reader blocks:
// the broker holds the rest instead of the agent's memory.
const shardDepth = 64

// disconnectQuiesce is how long a clean disconnect waits for the DISCONNECT
// packet (and the acks queued before it) to be written, in milliseconds.
const disconnectQuiesce = 250

// subackFailure is the SUBACK return code for a refused subscription.
const subackFailure = 0x80

// errEmitRefused is the cause of a run ended by an Emit error that was not
// the context ending.
var errEmitRefused = errors.New("the collector refused a batch")

// Source is an MQTT source: it subscribes to the configured topic filters
// and emits the decoded samples of each message, acknowledging the message
// to the broker only once the collector accepted them.
type Source struct {
	cfg      Config
	log      *slog.Logger
	stateDir string
}

var _ collector.Source = (*Source)(nil)

// New checks cfg (after applying its defaults) and the TLS files it names,
// so a broken config fails at start-up rather than at the first connect.
// A nil logger discards.
func New(cfg Config, logger *slog.Logger, opts ...Option) (*Source, error) {
	// Own copies, so a caller that reuses its Config cannot change a
	// running source.
	cfg.Subscriptions = append([]Subscription(nil), cfg.Subscriptions...)
	for i := range cfg.Subscriptions {
		if q := cfg.Subscriptions[i].QoS; q != nil {
			v := *q
			cfg.Subscriptions[i].QoS = &v
		}
	}
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
	if cfg.TLS.InsecureSkipVerify && usesTLS(cfg.URL) {
		logger.Warn("tls.insecure_skip_verify is on: the broker's certificate is not checked", "url", cfg.URL)
	}
	if cfg.CleanSession {
		logger.Info("clean_session is true: messages published while the agent is away are lost", "url", cfg.URL)
	}
	s := &Source{cfg: cfg, log: logger}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// tlsConfig reads the certificate files; nil for plain-text schemes.
func (c Config) tlsConfig() (*tls.Config, error) { return c.TLS.Build(c.URL) }

// Build reads the certificate files into the tls.Config for a connection
// to rawURL; it returns nil for plain-text schemes.
func (t TLSConfig) Build(rawURL string) (*tls.Config, error) {
	if !usesTLS(rawURL) {
		return nil, nil
	}
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // opt-in, warned about in New
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file: %s holds no PEM certificate", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file/tls.key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// run is the state of one Run call: its connections and workers.
type run struct {
	s      *Source
	out    collector.Output
	ctx    context.Context // ends when Run ends for any reason
	stop   context.CancelCauseFunc
	tls    *tls.Config
	shards []chan paho.Message
	linger time.Duration // lingerMax; a field so tests can stretch it
}

// Run connects, subscribes and delivers messages until ctx ends (it then
// returns nil) or a connection breaks (it returns an error naming the
// broker). It never reconnects by itself: the supervisor calls Run again,
// and every Run subscribes afresh, so a new connection is never left
// without its subscriptions.
func (s *Source) Run(ctx context.Context, out collector.Output) error {
	if ctx.Err() != nil {
		return nil
	}
	broker := "mqtt broker " + s.cfg.URL
	tlsCfg, err := s.cfg.tlsConfig()
	if err != nil {
		err = fmt.Errorf("%s: %w", broker, err)
		out.Connected(false, err)
		return err
	}

	runCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	r := &run{s: s, out: out, ctx: runCtx, stop: stop, tls: tlsCfg, shards: make([]chan paho.Message, s.cfg.Workers), linger: lingerMax}
	var workers sync.WaitGroup
	for i := range r.shards {
		r.shards[i] = make(chan paho.Message, shardDepth)
		workers.Go(func() { r.work(r.shards[i]) })
	}
	lost := make(chan error, 1)
	onLost := func(err error) {
		select {
		case lost <- err:
		default:
		}
	}

	// finish stops the workers before disconnecting, so the acks of
	// messages they completed still go out ahead of the DISCONNECT.
	var clients []paho.Client
	var retiring sync.WaitGroup
	finish := func(err error) error {
		stop(err)
		retiring.Wait()
		workers.Wait()
		for _, c := range clients {
			if c.IsConnectionOpen() {
				c.Disconnect(disconnectQuiesce)
			}
		}
		out.Connected(false, err)
		return err
	}

	filters := s.cfg.filters()
	for _, id := range s.cfg.clientIDs() {
		c, _, err := r.connect(ctx, id, s.cfg.CleanSession, nil, onLost)
		if err != nil {
			if ctx.Err() != nil {
				return finish(nil)
			}
			return finish(fmt.Errorf("%s: %w", broker, err))
		}
		clients = append(clients, c)
		if err := r.subscribe(c, lost, filters); err != nil {
			if ctx.Err() != nil {
				return finish(nil)
			}
			return finish(fmt.Errorf("%s: client %s: %w", broker, id, err))
		}
	}
	out.Connected(true, nil)
	s.log.Info("connected and subscribed", "url", s.cfg.URL, "topics", len(s.cfg.Subscriptions), "connections", len(clients))
	// Beside the live connections, so taking over an old session's
	// backlog does not hold up new messages.
	retiring.Go(func() { r.retireSessions(runCtx) })

	select {
	case <-ctx.Done():
		s.log.Debug("stopping", "url", s.cfg.URL)
		return finish(nil)
	case err := <-lost:
		return finish(fmt.Errorf("%s: connection lost: %w", broker, err))
	case <-runCtx.Done():
		if ctx.Err() != nil {
			return finish(nil) // ctx ended: runCtx ended with it
		}
		// A worker stopped the run: Emit failed while ctx was alive.
		return finish(fmt.Errorf("%s: %w", broker, context.Cause(runCtx)))
	}
}

// connect opens one connection as client id. Its messages go to the
// shards, through wrap when it is set. It reports whether the broker still
// had a session for id.
func (r *run) connect(ctx context.Context, id string, clean bool, wrap func(paho.Message) paho.Message, onLost func(error)) (paho.Client, bool, error) {
	cfg := r.s.cfg
	// This connection's messages are read by bufferedConn itself, before
	// paho, and their PUBACKs written straight into it (see
	// takePublishes and received). Those of a persistent session may come
	// before the SUBACK; they are taken like any other.
	var client paho.Client
	deliver := func(m paho.Message) {
		if wrap != nil {
			m = wrap(m)
		}
		Enqueue(r.ctx, client, r.shards[shardOf(m.Topic(), len(r.shards))], m)
	}
	opts := paho.NewClientOptions().
		AddBroker(cfg.URL).
		SetClientID(id).
		SetUsername(cfg.Username).
		SetPassword(cfg.Password.Reveal()).
		SetCleanSession(clean).
		SetProtocolVersion(4).
		SetKeepAlive(cfg.KeepAlive).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetWriteTimeout(cfg.ConnectTimeout).
		// The supervisor owns reconnecting, with its backoff and
		// metrics; paho retrying underneath would hide outages.
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetStore(NoStore{}).
		// Ack after Emit, not on receipt: that is the at-least-once
		// guarantee.
		SetAutoAckDisabled(true).
		SetCustomOpenConnectionFn(OpenConnectionTaking(cfg.MaxPayloadBytes, deliver)).
		// What paho still delivers (QoS 2, which no subscription asks
		// for but a broker may send) takes the same path, in order.
		SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { deliver(m) })
	if onLost != nil {
		opts.SetConnectionLostHandler(func(_ paho.Client, err error) { onLost(err) })
	}
	if r.tls != nil {
		opts.SetTLSConfig(r.tls)
	}
	client = paho.NewClient(opts)
	r.s.log.Debug("connecting", "url", cfg.URL, "client_id", id, "clean_session", clean)
	tok := client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		// paho cannot abort a connect; let it finish (ConnectTimeout
		// bounds it) and close whatever it opened.
		go func() {
			tok.Wait()
			client.Disconnect(0)
		}()
		return nil, false, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return nil, false, fmt.Errorf("client %s: connect: %w%s", id, err, connectHint(err))
	}
	ct, _ := tok.(*paho.ConnectToken)
	return client, ct != nil && ct.SessionPresent(), nil
}

// Enqueue hands m to its worker's queue. It blocks while the queue is
// full, which is the backpressure that leaves messages at the broker;
// but paho reports a lost connection only once the reader is free again,
// so while blocked it watches the connection too. A message it gives up
// on is not acknowledged, and the broker redelivers it next session. The
// Sparkplug source uses it as well.
func Enqueue[M any](ctx context.Context, c paho.Client, shard chan<- M, m M) {
	select {
	case shard <- m:
		return
	default:
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case shard <- m:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
			if !c.IsConnectionOpen() {
				return
			}
		}
	}
}

// subscribe sends one SUBSCRIBE for every filter and checks each return
// code, so a filter the broker's ACL refuses fails the run loudly instead
// of leaving a connection that receives nothing. filters maps each
// subscription's topic to the filter subscribed.
func (r *run) subscribe(client paho.Client, lost <-chan error, filters map[string]string) error {
	subs := r.s.cfg.Subscriptions
	req := make(map[string]byte, len(subs))
	for _, sub := range subs {
		req[filters[sub.Topic]] = byte(*sub.QoS)
	}
	tok := client.SubscribeMultiple(req, nil)
	timer := time.NewTimer(r.s.cfg.ConnectTimeout)
	defer timer.Stop()
	select {
	case <-tok.Done():
	case err := <-lost:
		return fmt.Errorf("connection lost while subscribing: %w", err)
	case <-timer.C:
		return fmt.Errorf("subscribe: no SUBACK within %s", r.s.cfg.ConnectTimeout)
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	st, ok := tok.(*paho.SubscribeToken)
	if !ok {
		return fmt.Errorf("subscribe: unexpected token type %T", tok)
	}
	granted := st.Result()
	var refused []string
	for _, sub := range subs {
		f := filters[sub.Topic]
		code, ok := granted[f]
		switch {
		case !ok || code == subackFailure:
			refused = append(refused, f)
		case code < byte(*sub.QoS):
			r.s.log.Warn("broker granted a lower QoS than asked: messages may be lost while the agent is away",
				"topic", f, "asked", *sub.QoS, "granted", code)
		}
	}
	if len(refused) > 0 {
		sort.Strings(refused)
		return fmt.Errorf("subscribe: the broker refused topic %s (SUBACK 0x80; check its ACL)", strings.Join(refused, ", "))
	}
	return nil
}

// maxDrain bounds how many waiting messages a worker takes together, and
// maxDrainBytes their payload, so one queue record stays small.
const (
	maxDrain      = 256
	maxDrainBytes = 1 << 20
)

// A worker that has taken what is waiting lingers up to lingerMax for
// more, so that one queue write and one burst of PUBACKs serve many
// messages. At QoS 0 that costs nothing but the millisecond. At QoS 1 the
// broker sends each connection only a window of messages before their
// PUBACKs (Mosquitto: 20), so lingering caps a source at about
// connections × window / (round trip + lingerMax): with 4 connections
// some 65,000 messages/s, above what the agent takes on a small box
// anyway, with 2 some 33,000, which measurably lost messages. So QoS 1
// lingers only from lingerQoS1Connections connections on. At 1M QoS 1
// messages over 4 connections that took the agent from about 1.4 to 1.0
// CPU s per 100k messages: fewer, fuller writes of PUBACKs and of the
// queue. (Ending the wait once the shard went quiet for 200 µs, which
// would lift the cap, gave smaller batches and cost more CPU.)
const (
	lingerMax             = time.Millisecond
	lingerQoS1Connections = 4
)

// work decodes and emits the messages of one shard in order. Whatever is
// waiting in the shard when the worker comes round is handled together:
// one queue write and then all the acks, instead of a write per message.
func (r *run) work(in <-chan paho.Message) {
	var (
		dec  Decoder
		h    handler
		msgs []paho.Message
	)
	lingerQoS1 := r.s.cfg.Connections >= lingerQoS1Connections
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for r.ctx.Err() == nil {
		select {
		case <-r.ctx.Done():
			return
		case m := <-in:
			msgs = append(msgs[:0], m)
			size, waitMore := len(m.Payload()), m.Qos() == 0 || lingerQoS1
			if waitMore {
				linger.Reset(r.linger)
			}
		drain:
			for len(msgs) < maxDrain && size < maxDrainBytes {
				var m paho.Message
				if waitMore {
					select {
					case m = <-in:
					case <-linger.C:
						waitMore = false
						continue
					case <-r.ctx.Done():
						break drain
					}
				} else {
					select {
					case m = <-in:
					default:
						break drain
					}
				}
				msgs = append(msgs, m)
				size += len(m.Payload())
				if m.Qos() > 0 && !lingerQoS1 {
					waitMore = false
				}
			}
			linger.Stop()
			r.handle(&dec, &h, msgs)
			clear(msgs) // let the payloads go
		}
	}
}

// handler is a worker's reusable scratch space.
type handler struct {
	samples []collector.Sample
	spans   []span
	batches []collector.Batch
	acks    []paho.Message
	ackBuf  []byte
}

// span is where one message's samples lie in handler.samples.
type span struct {
	origin     string
	start, end int
}

// handle processes messages and acks each once it is done with it:
// emitted, or counted as bad input (so the broker does not redeliver it
// forever). Messages whose samples could not be queued are not acked.
func (r *run) handle(dec *Decoder, h *handler, msgs []paho.Message) {
	h.samples, h.spans, h.acks = h.samples[:0], h.spans[:0], h.acks[:0]
	// One receive time for what arrived together (within the worker's
	// linger of a millisecond): a clock read per message was 1 % of the
	// agent's CPU at QoS 0.
	received := time.Now()
	for _, m := range msgs {
		topic, payload := m.Topic(), m.Payload()
		if size := max(len(payload), PayloadSkipped(m)); size > r.s.cfg.MaxPayloadBytes {
			r.out.Bad(ReasonOversized, fmt.Errorf("topic %s: payload of %d bytes exceeds max_payload_bytes %d", topic, size, r.s.cfg.MaxPayloadBytes))
			m.Ack()
			continue
		}
		sub := r.s.match(topic)
		if sub == nil {
			// A persistent session keeps subscriptions from an older config
			// until the broker forgets the client.
			r.out.Bad(ReasonUnexpectedTopic, fmt.Errorf("topic %s matches no configured subscription (left over in the persistent session?)", topic))
			m.Ack()
			continue
		}
		start := len(h.samples)
		samples, err := dec.Decode(payload, sub.JSON, received, h.samples)
		if err != nil && !r.refused(m, topic, err) {
			continue
		}
		if samples != nil {
			h.samples = samples
		}
		if len(h.samples) > start {
			h.spans = append(h.spans, span{topic, start, len(h.samples)})
		}
		h.acks = append(h.acks, m)
	}
	if len(h.spans) > 0 {
		// Batches are cut only now: h.samples may have moved while it grew.
		h.batches = h.batches[:0]
		for _, sp := range h.spans {
			h.batches = append(h.batches, collector.Batch{Origin: sp.origin, Samples: h.samples[sp.start:sp.end]})
		}
		err := r.out.Emit(r.ctx, h.batches...)
		clear(h.batches)
		if err != nil {
			// Not acked: the broker redelivers them to the next session.
			if r.ctx.Err() == nil {
				r.stop(fmt.Errorf("%w: topic %s: %w", errEmitRefused, h.spans[0].origin, err))
			}
			return
		}
	}
	h.ackBuf = ackAll(h.acks, h.ackBuf)
}

// refused reports a decode error of the message on topic and whether the
// message still has samples to emit (some values were bad, not all).
// Apart from handle so that the error targets escape only on this path.
func (r *run) refused(m paho.Message, topic string, err error) (emit bool) {
	var partial ValueErrors
	var whole *BadInputError
	switch {
	case errors.As(err, &partial):
		for _, e := range partial {
			r.out.Bad(e.Reason, fmt.Errorf("topic %s: %w", topic, e))
		}
		return true
	case errors.As(err, &whole):
		r.out.Bad(whole.Reason, fmt.Errorf("topic %s: %w", topic, whole))
	default:
		r.out.Bad(ReasonInvalidJSON, fmt.Errorf("topic %s: %w", topic, err))
	}
	m.Ack()
	return false
}

// match finds the subscription a topic arrived for; the first that
// matches wins, as it would in a router.
func (s *Source) match(topic string) *Subscription {
	for i := range s.cfg.Subscriptions {
		if matchTopic(s.cfg.Subscriptions[i].Topic, topic) {
			return &s.cfg.Subscriptions[i]
		}
	}
	return nil
}

// shardOf picks a worker by the FNV-1a hash of the topic, inlined because
// hash/fnv would allocate per message.
func shardOf(topic string, n int) int {
	const (
		offset32 = 2166136261
		prime32  = 16777619
	)
	h := uint32(offset32)
	for i := 0; i < len(topic); i++ {
		h ^= uint32(topic[i])
		h *= prime32
	}
	return int(h % uint32(n))
}

// connectHint says what to check for the connect failures people meet
// when commissioning a broker connection.
func connectHint(err error) string {
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	switch {
	case errors.Is(err, packets.ErrorRefusedNotAuthorised), errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword):
		return "; check username and password, and the broker's ACL for this client"
	case errors.Is(err, packets.ErrorRefusedIDRejected):
		return "; the broker refused client_id; choose another"
	case errors.As(err, &unknownCA):
		return "; the broker's certificate is not signed by a CA in tls.ca_file"
	case errors.As(err, &hostname):
		return "; the broker's certificate does not name this host; set tls.server_name to a name it has"
	case strings.Contains(err.Error(), "remote error: tls"):
		return "; the broker refused the TLS handshake: check tls.cert_file and tls.key_file against the CA the broker trusts"
	}
	return ""
}
