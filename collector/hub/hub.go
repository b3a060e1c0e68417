// Package hub is the cluster's aggregator: it receives the firms'
// anonymous contributions over MQTT, validates them, and when an hour has
// closed writes per machine class and KPI the quartiles and the number of
// firms to the benchmark measurement, publishing only groups of at least k
// firms and never a minimum, a maximum or a single firm's value.
package hub

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
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
	LastArrival   time.Time                     `json:"last_arrival"`
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

// Hub receives contributions and publishes the benchmark.
type Hub struct {
	cfg   Config
	log   *slog.Logger
	w     Writer
	now   func() time.Time
	state string

	mu      sync.Mutex
	groups  map[string]*group
	rng     *rand.Rand
	refused map[string]int64
	fail    chan error
	ready   atomic.Bool
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

// WithRand seeds the noise, for tests.
func WithRand(r *rand.Rand) Option { return func(h *Hub) { h.rng = r } }

// New builds a hub and restores the contributions a previous run kept.
// It contacts neither the broker nor InfluxDB.
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
	var seed [32]byte
	_, _ = cryptorand.Read(seed[:])
	h := &Hub{cfg: cfg, log: logger, now: time.Now, state: filepath.Join(cfg.DataDir, "hub-state.json"),
		groups: map[string]*group{}, rng: rand.New(rand.NewChaCha8(seed)), refused: map[string]int64{},
		fail: make(chan error, 1)}
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
// before it returns nil. A later contribution of the same firm, class and
// period replaces the earlier one. It returns a *ParseError for a message
// that is refused for good.
func (h *Hub) Accept(topic string, payload []byte) error {
	now := h.now()
	c, err := Parse(h.cfg.TopicPrefix, topic, payload, now, h.cfg.MaxAge)
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
			g = &group{Class: c.Class, Period: c.Period, Start: c.Start, Contributions: map[string]share.Contribution{}}
			h.groups[key] = g
		case !g.ClosedAt.IsZero():
			err = refuse("late", "period %s of %s was published at %s", c.Start.Format(time.RFC3339), c.Class, g.ClosedAt.Format(time.RFC3339))
		}
		if err == nil {
			g.Contributions[c.Contributor] = c
			g.LastArrival = now
			g.changes++
			if err := h.saveLocked(); err != nil {
				return fmt.Errorf("%w: %w", errStore, err)
			}
			h.log.Debug("hub: contribution accepted", "class", c.Class, "period_start", c.Start, "firms", len(g.Contributions))
			return nil
		}
	}
	var pe *ParseError
	reason := "invalid"
	if errors.As(err, &pe) {
		reason = pe.Reason
	}
	h.refused[reason]++
	// Rate limited by nature: at most a few messages per firm and hour.
	h.log.Warn("hub: contribution refused", "topic", topic, "reason", reason, "err", err)
	return err
}

// Refused reports how many messages were refused, per reason.
func (h *Hub) Refused() map[string]int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int64, len(h.refused))
	for k, v := range h.refused {
		out[k] = v
	}
	return out
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

// Filters are the topic filters the hub subscribes to.
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
	return out
}

// session is one broker connection with a persistent session: what
// arrives while the hub is away is queued by the broker, and a message is
// acknowledged only once it is in the state file.
func (h *Hub) session(ctx context.Context) error {
	o, err := h.cfg.Broker.ClientOptions(h.cfg.Broker.ClientID)
	if err != nil {
		return err
	}
	lost := make(chan error, 1)
	handle := func(_ paho.Client, m paho.Message) {
		if err := h.Accept(m.Topic(), m.Payload()); errors.Is(err, errStore) {
			h.log.Error("hub: cannot keep a contribution; reconnecting so the broker sends it again", "err", err)
			select {
			case h.fail <- err:
			default:
			}
			return
		}
		m.Ack()
	}
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
	if err := share.Wait(ctx, c.Connect(), h.cfg.Broker.ConnectTimeout); err != nil {
		c.Disconnect(0)
		return fmt.Errorf("connect to %s: %w", h.cfg.Broker.URL, err)
	}
	defer c.Disconnect(250)
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
	case err := <-h.fail:
		return err
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
				g.Contributions = nil
				h.unsaved = true
			}
			continue
		}
		if now.Before(g.Start.Add(time.Hour+h.cfg.Grace)) || now.Before(g.LastArrival.Add(h.cfg.Quiet)) {
			continue
		}
		cp := *g
		cp.Contributions = maps(g.Contributions)
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
		points, skipped := Aggregate(d.g.Contributions, h.cfg.K, h.cfg.Epsilon, h.rng)
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
			g.Contributions = nil
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

func maps(m map[string]share.Contribution) map[string]share.Contribution {
	out := make(map[string]share.Contribution, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
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
