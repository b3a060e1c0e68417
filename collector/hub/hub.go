// Package hub is the cluster's aggregator: it receives the firms'
// anonymous contributions over MQTT, validates them, and when an hour has
// closed writes per machine class and KPI the quartiles and the number of
// firms to the benchmark measurement, publishing only groups of at least k
// firms and never a minimum, a maximum or a single firm's value.
package hub

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/renameio/v2"

	"github.com/noordoostpolder/shopfloor/collector/share"
)

// Point is one row of the benchmark measurement.
type Point struct {
	Class, KPI, Period string
	Start              time.Time
	P25, P50, P75      float64
	Firms              int
}

// Writer stores benchmark points. It returns nil only when all are stored.
type Writer interface {
	WritePoints(ctx context.Context, points []Point) error
}

// group is the contributions to one class and period.
type group struct {
	Class         string                        `json:"class"`
	Period        string                        `json:"period"`
	Start         time.Time                     `json:"start"`
	Contributions map[string]share.Contribution `json:"contributions,omitempty"`
	// Received is, per contributor, when a hub of the group accepted the
	// contribution held (Unix milliseconds): the newest stamp wins.
	Received    map[string]int64 `json:"received,omitempty"`
	LastArrival time.Time        `json:"last_arrival"`
	// ClosedAt is when the period was aggregated; later contributions are
	// refused as late.
	ClosedAt time.Time `json:"closed_at,omitzero"`
	// changes counts accepted contributions, so closing can tell one
	// that came while it wrote.
	changes int
}

func groupKey(class, period string, start time.Time) string {
	return class + "|" + period + "|" + start.UTC().Format(time.RFC3339)
}

// Sources of accepted contributions, the keys of Hub.Accepted.
const (
	// SourceDirect is the shared subscription: a firm's message the
	// broker handed to this hub of the group.
	SourceDirect = "direct"
	// SourceMirror is a contribution another hub of the group (or this
	// one) took from the shared subscription and passed on.
	SourceMirror = "mirror"
)

// Hub receives contributions and publishes the benchmark.
type Hub struct {
	cfg   Config
	log   *slog.Logger
	w     Writer
	now   func() time.Time
	state string
	// secret keys the noise, so the hubs of a group draw the same.
	secret []byte

	mu       sync.Mutex
	groups   map[string]*group
	refused  map[string]int64
	accepted map[string]int64
	ready    atomic.Bool
	// unsaved says the state file still holds something memory
	// discarded; closeDue saves until that succeeds.
	unsaved bool
}

// Option tunes a Hub beyond its Config.
type Option func(*Hub)

// WithWriter replaces the InfluxDB writer, for tests.
func WithWriter(w Writer) Option { return func(h *Hub) { h.w = w } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(h *Hub) { h.now = now } }

// New builds a hub, reads (or creates) its noise secret and restores the
// contributions a previous run kept. It contacts neither the broker nor
// InfluxDB.
func New(cfg Config, logger *slog.Logger, opts ...Option) (*Hub, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("hub: data_dir: %w", err)
	}
	// <data_dir>/secret, made like a firm's secret: 32 random bytes,
	// created on first start, mode 0600.
	secret, err := share.LoadOrCreateSecret(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("hub: the noise secret (every hub of a group needs the same file): %w", err)
	}
	h := &Hub{cfg: cfg, log: logger, now: time.Now, state: filepath.Join(cfg.DataDir, "hub-state.json"),
		secret: secret, groups: map[string]*group{}, refused: map[string]int64{}, accepted: map[string]int64{}}
	for _, o := range opts {
		o(h)
	}
	if h.w == nil {
		w, err := newInfluxWriter(cfg.InfluxDB)
		if err != nil {
			return nil, err
		}
		h.w = w
	}
	if err := h.load(); err != nil {
		return nil, err
	}
	if !cfg.Broker.UsesTLS() {
		logger.Warn("hub: the broker url is not TLS; contributions travel in plain text", "url", cfg.Broker.URL)
	}
	return h, nil
}

// errStore marks a contribution that was valid but could not be kept; it
// is not acknowledged, so the broker delivers it again.
var errStore = errors.New("hub: cannot store the contribution")

// Accept validates one message and keeps it for its period, on disk
// before it returns nil. The message is a firm's contribution from the
// shared subscription or one a hub of the group mirrored (MirrorTopic).
// Of one firm, class and period the contribution with the newest received
// stamp is kept: a direct one is stamped with the hub's clock, a mirrored
// one carries the stamp of the hub that took it in; an older one is
// refused as stale, and the same one again changes nothing. It returns a
// *ParseError for a message that is refused for good.
func (h *Hub) Accept(topic string, payload []byte) error {
	_, _, err := h.receive(topic, payload)
	return err
}

// receive is Accept that also returns, for a direct contribution the
// hub kept, the mirror to publish for the rest of the group.
func (h *Hub) receive(topic string, payload []byte) (mirrorTopic string, mirror []byte, err error) {
	now := h.now()
	src, stamp := SourceDirect, now.UnixMilli()
	var c share.Contribution
	if h.cfg.Group != "" && strings.HasPrefix(topic, mirrorPrefix(h.cfg.TopicPrefix, h.cfg.Group)) {
		src = SourceMirror
		c, stamp, err = ParseMirror(h.cfg.TopicPrefix, h.cfg.Group, topic, payload, now, h.cfg.MaxAge)
	} else {
		c, err = Parse(h.cfg.TopicPrefix, topic, payload, now, h.cfg.MaxAge)
	}
	if err == nil && len(h.cfg.Classes) > 0 && !slices.Contains(h.cfg.Classes, c.Class) {
		err = refuse("class", "class %q is not handled by this hub", c.Class)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		key := groupKey(c.Class, c.Period, c.Start)
		g := h.groups[key]
		switch {
		case g == nil:
			g = &group{Class: c.Class, Period: c.Period, Start: c.Start, Contributions: map[string]share.Contribution{}, Received: map[string]int64{}}
			h.groups[key] = g
		case !g.ClosedAt.IsZero():
			err = refuse("late", "period %s of %s was published at %s", c.Start.Format(time.RFC3339), c.Class, g.ClosedAt.Format(time.RFC3339))
		}
		var changed bool
		if err == nil {
			changed, err = g.keep(c, stamp)
		}
		if err == nil {
			if changed {
				g.LastArrival = now
				g.changes++
				if err := h.saveLocked(); err != nil {
					return "", nil, fmt.Errorf("%w: %w", errStore, err)
				}
				h.accepted[src]++
				h.log.Debug("hub: contribution accepted", "source", src, "class", c.Class, "period_start", c.Start, "firms", len(g.Contributions))
			}
			if src == SourceDirect && h.cfg.Group != "" {
				b, err := json.Marshal(Mirror{Received: stamp, Payload: payload})
				if err != nil {
					return "", nil, fmt.Errorf("%w: mirror: %w", errStore, err)
				}
				return MirrorTopic(h.cfg.TopicPrefix, h.cfg.Group, c.Contributor, c.Class), b, nil
			}
			return "", nil, nil
		}
	}
	var pe *ParseError
	reason := "invalid"
	if errors.As(err, &pe) {
		reason = pe.Reason
	}
	h.refused[reason]++
	level := slog.LevelWarn
	if reason == "stale" {
		level = slog.LevelInfo // hubs overtaking each other; nothing is wrong
	}
	// Rate limited by nature: at most a few messages per firm and hour.
	h.log.Log(context.Background(), level, "hub: contribution refused", "topic", topic, "source", src, "reason", reason, "err", err)
	return "", nil, err
}

// keep stores c, received at stamp, unless the group holds a newer
// contribution of the same firm. Equal stamps (two hubs in the same
// millisecond) are ordered by the contributions' JSON, so every hub keeps
// the same one. changed is false when c is what the group holds already,
// such as a hub's own mirror coming back.
func (g *group) keep(c share.Contribution, stamp int64) (changed bool, err error) {
	if g.Received == nil {
		g.Received = map[string]int64{}
	}
	if held, ok := g.Contributions[c.Contributor]; ok {
		heldStamp := g.Received[c.Contributor]
		order := cmp.Compare(stamp, heldStamp)
		if order == 0 {
			a, _ := json.Marshal(c)
			b, _ := json.Marshal(held)
			order = bytes.Compare(a, b)
		}
		switch {
		case order == 0:
			return false, nil
		case order < 0:
			return false, refuse("stale", "a contribution received at %s is held; this one was received at %s",
				time.UnixMilli(heldStamp).UTC().Format(time.RFC3339Nano), time.UnixMilli(stamp).UTC().Format(time.RFC3339Nano))
		}
	}
	g.Contributions[c.Contributor] = c
	g.Received[c.Contributor] = stamp
	return true, nil
}

// Accepted reports how many contributions were accepted (kept or
// replaced), per source: SourceDirect or SourceMirror.
func (h *Hub) Accepted() map[string]int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.accepted)
}

// Refused reports how many messages were refused, per reason.
func (h *Hub) Refused() map[string]int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.refused)
}

// Pending reports how many contributions wait in open periods.
func (h *Hub) Pending() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, g := range h.groups {
		if g.ClosedAt.IsZero() {
			n += len(g.Contributions)
		}
	}
	return n
}

// Ready reports whether the hub is connected and subscribed.
func (h *Hub) Ready() bool { return h.ready.Load() }

// Contributors lists the pseudonyms waiting in the open period of class
// starting at start, sorted; for tests and troubleshooting.
func (h *Hub) Contributors(class string, start time.Time) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.groups[groupKey(class, "1h", start)]
	if g == nil {
		return nil
	}
	out := make([]string, 0, len(g.Contributions))
	for id := range g.Contributions {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// Run receives contributions and closes periods until ctx is done; it
// reconnects to the broker with backoff when the connection breaks. It
// returns after saving the state.
func (h *Hub) Run(ctx context.Context) error {
	closerDone := make(chan struct{})
	go func() {
		defer close(closerDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				h.closeDue(ctx)
			}
		}
	}()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = time.Second, 30*time.Second
	for {
		start := time.Now()
		err := h.session(ctx)
		if ctx.Err() != nil {
			break
		}
		if time.Since(start) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		h.log.Warn("hub: broker connection ended; reconnecting", "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		if ctx.Err() != nil {
			break
		}
	}
	<-closerDone
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.saveLocked()
}

// Filters are the topic filters the hub subscribes to: the firms'
// contributions through the shared subscription of its group, and the
// group's mirrors through a plain one, so every hub of the group gets
// every contribution.
func (h *Hub) Filters() []string {
	classes := h.cfg.Classes
	if len(classes) == 0 {
		classes = []string{"+"}
	}
	var out []string
	for _, cl := range classes {
		f := h.cfg.TopicPrefix + "/contrib/+/" + cl
		if h.cfg.Group != "" {
			f = "$share/" + h.cfg.Group + "/" + f
		}
		out = append(out, f)
	}
	if h.cfg.Group != "" {
		for _, cl := range classes {
			out = append(out, MirrorTopic(h.cfg.TopicPrefix, h.cfg.Group, "+", cl))
		}
	}
	return out
}

// session is one broker connection with a persistent session: what
// arrives while the hub is away is queued by the broker, and a message is
// acknowledged only once it is in the state file and, when it came
// through the shared subscription, its mirror has been confirmed by the
// broker (PUBACK). A hub that stops in between leaves the message with
// the broker, which delivers it again.
func (h *Hub) session(ctx context.Context) error {
	o, err := h.cfg.Broker.ClientOptions(h.cfg.Broker.ClientID)
	if err != nil {
		return err
	}
	lost := make(chan error, 1)
	fail := make(chan error, 1)
	// paho hands messages over and reads PUBACKs in one goroutine, so a
	// handler waiting for a PUBACK would wait for ever: the handler only
	// queues, and one worker takes the messages in order. The queue holds
	// at most what the broker has in flight to the hub, as nothing is
	// acknowledged before the worker is done with it.
	in := &inbox{ready: make(chan struct{}, 1)}
	handle := func(_ paho.Client, m paho.Message) { in.push(m) }
	o.SetCleanSession(false).SetAutoAckDisabled(true).SetOrderMatters(true).
		// Messages the broker kept for the session arrive before the
		// subscription is renewed: the default handler takes them.
		SetDefaultPublishHandler(handle).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	c := paho.NewClient(o)
	wctx, stopWorker := context.WithCancel(ctx)
	var worker sync.WaitGroup
	worker.Add(1)
	go func() {
		defer worker.Done()
		for {
			m, ok := in.pop(wctx)
			if !ok {
				return
			}
			if err := h.take(wctx, c, m); err != nil {
				if wctx.Err() == nil {
					h.log.Error("hub: cannot keep or pass on a contribution; reconnecting so the broker sends it again", "err", err)
					select {
					case fail <- err:
					default:
					}
				}
				return
			}
		}
	}()
	// The worker stops before the connection goes: nothing is
	// acknowledged on a connection that is closing.
	defer func() {
		stopWorker()
		worker.Wait()
		c.Disconnect(250)
	}()
	if err := share.Wait(ctx, c.Connect(), h.cfg.Broker.ConnectTimeout); err != nil {
		return fmt.Errorf("connect to %s: %w", h.cfg.Broker.URL, err)
	}
	filters := map[string]byte{}
	for _, f := range h.Filters() {
		filters[f] = 1
	}
	tok := c.SubscribeMultiple(filters, handle)
	if err := share.Wait(ctx, tok, h.cfg.Broker.ConnectTimeout); err != nil {
		return fmt.Errorf("subscribe at %s: %w", h.cfg.Broker.URL, err)
	}
	for f, q := range tok.(*paho.SubscribeToken).Result() {
		if q == 0x80 {
			return fmt.Errorf("the broker refused the subscription %s; check the hub user's ACL", f)
		}
	}
	h.log.Info("hub: subscribed", "url", h.cfg.Broker.URL, "filters", h.Filters())
	h.ready.Store(true)
	defer h.ready.Store(false)
	select {
	case <-ctx.Done():
		return nil
	case err := <-lost:
		return fmt.Errorf("connection to %s lost: %w", h.cfg.Broker.URL, err)
	case err := <-fail:
		return err
	}
}

// take accepts one message, mirrors it to the group when it came through
// the shared subscription, and only then acknowledges it. An error means
// the message was not acknowledged and the session must start over.
func (h *Hub) take(ctx context.Context, c paho.Client, m paho.Message) error {
	topic, mirror, err := h.receive(m.Topic(), m.Payload())
	if errors.Is(err, errStore) {
		return err
	}
	if mirror != nil {
		// Not retained: nothing raw stays on the broker once every hub
		// of the group has it.
		if err := share.Wait(ctx, c.Publish(topic, 1, false, mirror), h.cfg.Broker.ConnectTimeout); err != nil {
			return fmt.Errorf("hub: mirror %s: %w", topic, err)
		}
	}
	m.Ack()
	return nil
}

// inbox is the session's queue of received messages; push never blocks.
type inbox struct {
	mu    sync.Mutex
	msgs  []paho.Message
	ready chan struct{}
}

func (q *inbox) push(m paho.Message) {
	q.mu.Lock()
	q.msgs = append(q.msgs, m)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop returns the oldest message, waiting for one until ctx is done.
func (q *inbox) pop(ctx context.Context) (paho.Message, bool) {
	for {
		q.mu.Lock()
		if len(q.msgs) > 0 {
			m := q.msgs[0]
			q.msgs[0] = nil
			q.msgs = q.msgs[1:]
			q.mu.Unlock()
			return m, true
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, false
		case <-q.ready:
		}
	}
}

// closeDue publishes the periods that are due: grace after their end and
// quiet after their last contribution.
func (h *Hub) closeDue(ctx context.Context) {
	now := h.now()
	type due struct {
		key     string
		g       group
		changes int
	}
	var todo []due
	h.mu.Lock()
	for key, g := range h.groups {
		if !g.ClosedAt.IsZero() {
			keep := max(h.cfg.MaxAge+time.Hour, g.ClosedAt.Sub(g.Start)+h.cfg.Retention)
			if now.After(g.Start.Add(keep)) {
				delete(h.groups, key)
				h.unsaved = true
			} else if h.cfg.Retention > 0 && now.After(g.ClosedAt.Add(h.cfg.Retention)) && g.Contributions != nil {
				g.Contributions, g.Received = nil, nil
				h.unsaved = true
			}
			continue
		}
		if now.Before(g.Start.Add(time.Hour+h.cfg.Grace)) || now.Before(g.LastArrival.Add(h.cfg.Quiet)) {
			continue
		}
		cp := *g
		cp.Contributions = maps.Clone(g.Contributions)
		todo = append(todo, due{key, cp, g.changes})
	}
	if h.unsaved {
		// Discarding is done only once the state file no longer holds
		// them either; a failed save is retried at the next tick.
		if err := h.saveLocked(); err != nil {
			h.log.Error("hub: cannot save state after discarding contributions", "err", err)
		}
	}
	h.mu.Unlock()
	for _, d := range todo {
		points, skipped := Aggregate(d.g.Contributions, h.cfg.K, h.cfg.Epsilon, h.noise(d.key, d.g.Contributions))
		if len(points) > 0 {
			wctx, cancel := context.WithTimeout(ctx, h.cfg.InfluxDB.Timeout+time.Second)
			err := h.w.WritePoints(wctx, points)
			cancel()
			if err != nil {
				// The period stays open and is written at the next tick.
				h.log.Error("hub: cannot write the benchmark; retrying", "class", d.g.Class, "period_start", d.g.Start, "err", err)
				return
			}
		}
		h.mu.Lock()
		g := h.groups[d.key]
		if g == nil || g.changes != d.changes {
			h.mu.Unlock()
			continue // a contribution came meanwhile: publish again next tick
		}
		g.ClosedAt = now
		if h.cfg.Retention == 0 {
			g.Contributions, g.Received = nil, nil
		}
		h.unsaved = true
		err := h.saveLocked()
		h.mu.Unlock()
		if err != nil {
			h.log.Error("hub: cannot save state", "err", err)
		}
		h.log.Info("hub: period published", "class", d.g.Class, "period_start", d.g.Start,
			"firms", len(d.g.Contributions), "kpis_published", len(points), "kpis_withheld", skipped)
	}
}

// noise is the generator of one period's noise, seeded with
// HMAC-SHA256 keyed with the hub secret over the group key and the
// period's contributions in canonical form (sorted by contributor, each
// as its JSON, one a line). Hubs of one group with the same secret file
// and the same contributions draw the same noise, and so write the same
// points; publishing a period again with the same contributions repeats
// its noise rather than drawing more to average out.
func (h *Hub) noise(key string, contribs map[string]share.Contribution) *rand.Rand {
	mac := hmac.New(sha256.New, h.secret)
	mac.Write([]byte("shopfloor-hub-noise-v1\n" + key + "\n"))
	ids := make([]string, 0, len(contribs))
	for id := range contribs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		b, _ := json.Marshal(contribs[id]) // plain values; map keys sorted
		mac.Write(b)
		mac.Write([]byte("\n"))
	}
	var seed [32]byte
	copy(seed[:], mac.Sum(nil))
	return rand.New(rand.NewChaCha8(seed))
}

// Aggregate computes the benchmark points of one group: per KPI that at
// least k firms reported, the Harrell–Davis quartiles and the number of
// firms, with Laplace noise when epsilon > 0. skipped lists the KPIs
// withheld for having fewer than k firms.
func Aggregate(contribs map[string]share.Contribution, k int, epsilon float64, rng *rand.Rand) (points []Point, skipped []string) {
	var class, period string
	var start time.Time
	values := map[string][]float64{}
	for _, c := range contribs {
		class, period, start = c.Class, c.Period, c.Start
		for kpi, v := range c.KPIs {
			values[kpi] = append(values[kpi], v)
		}
	}
	for _, kpi := range share.KPIs {
		vs := values[kpi]
		if len(vs) == 0 {
			continue
		}
		if len(vs) < k {
			skipped = append(skipped, kpi)
			continue
		}
		q := [3]float64{Quantile(vs, 0.25), Quantile(vs, 0.5), Quantile(vs, 0.75)}
		if epsilon > 0 {
			q = addNoise(q, kpi, len(vs), epsilon, rng)
		}
		points = append(points, Point{Class: class, KPI: kpi, Period: period, Start: start,
			P25: q[0], P50: q[1], P75: q[2], Firms: len(vs)})
	}
	return points, skipped
}

// addNoise adds Laplace noise of scale span/(n·ε) to each quartile, span
// being 1 for ratios and the interquartile range (or the median when that
// is 0) for the others, then keeps the quartiles ordered and in range. It
// blurs how far one firm moves a quartile; it is not a formal
// differential-privacy guarantee, which quartiles of five values cannot
// have with useful accuracy.
func addNoise(q [3]float64, kpi string, n int, epsilon float64, rng *rand.Rand) [3]float64 {
	span := 1.0
	if !share.IsRatio(kpi) {
		span = q[2] - q[0]
		if span <= 0 {
			span = math.Abs(q[1])
		}
	}
	b := span / (float64(n) * epsilon)
	for i := range q {
		u := rng.Float64() - 0.5
		q[i] -= b * math.Copysign(math.Log(1-2*math.Abs(u)), u)
		q[i] = max(q[i], 0)
		if share.IsRatio(kpi) {
			q[i] = min(q[i], 1)
		}
	}
	sort.Float64s(q[:])
	return q
}

type savedState struct {
	Version int      `json:"version"`
	Groups  []*group `json:"groups"`
}

// saveLocked writes the state file atomically and synced, so an
// acknowledged contribution survives a crash.
func (h *Hub) saveLocked() error {
	st := savedState{Version: 1}
	for _, g := range h.groups {
		st.Groups = append(st.Groups, g)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("hub: save: %w", err)
	}
	if err := renameio.WriteFile(h.state, b, 0o600); err != nil {
		return fmt.Errorf("hub: save: %w", err)
	}
	h.unsaved = false
	return nil
}

func (h *Hub) load() error {
	b, err := os.ReadFile(h.state)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("hub: read state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil || st.Version != 1 {
		// Refusing to start would lose more: the broker keeps what
		// arrives while the hub is down.
		h.log.Error("hub: the saved state is unreadable; starting fresh", "file", h.state, "err", err)
		return nil
	}
	for _, g := range st.Groups {
		if g.Contributions == nil && g.ClosedAt.IsZero() {
			g.Contributions = map[string]share.Contribution{}
		}
		if g.Received == nil && g.Contributions != nil {
			// A state file from before the stamps: any contribution
			// received now is newer.
			g.Received = map[string]int64{}
		}
		h.groups[groupKey(g.Class, g.Period, g.Start)] = g
	}
	h.log.Info("hub: state restored", "file", h.state, "contributions_pending", h.pendingLocked())
	return nil
}

func (h *Hub) pendingLocked() int {
	n := 0
	for _, g := range h.groups {
		if g.ClosedAt.IsZero() {
			n += len(g.Contributions)
		}
	}
	return n
}
