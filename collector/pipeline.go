package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

// PipelineConfig tunes the queue and the writer. The zero value of each
// field means its default.
type PipelineConfig struct {
	// QueueMessages bounds the in-memory queue between the sources and the
	// sink, in batches (one MQTT message is one batch). When it is full,
	// sources block and stop acknowledging, so the broker holds the data.
	QueueMessages int `yaml:"queue_messages"`
	// BatchSize is the most samples per sink write. It is not read from
	// the pipeline's YAML section: the agent takes it from the sink's
	// batch_size, so one knob sizes both the batch and the request.
	BatchSize int `yaml:"-"`
	// FlushInterval is how long a partial batch may wait for more samples;
	// like BatchSize it comes from the sink's section.
	FlushInterval time.Duration `yaml:"-"`
	// RetryMin and RetryMax bound the exponential backoff, with jitter, of
	// sink retries and source restarts.
	RetryMin time.Duration `yaml:"retry_min"`
	RetryMax time.Duration `yaml:"retry_max"`
	// DrainTimeout is how long shutdown waits for the sink to take what is
	// still queued.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// SetDefaults fills unset fields. The defaults favour throughput at a
// bounded latency: 5000 samples is where InfluxDB's write cost per point
// levels off, and a second is well below any dashboard's refresh.
func (c *PipelineConfig) SetDefaults() {
	if c.QueueMessages == 0 {
		c.QueueMessages = 20000
	}
	if c.BatchSize == 0 {
		c.BatchSize = 5000
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = time.Second
	}
	if c.RetryMin == 0 {
		c.RetryMin = 100 * time.Millisecond
	}
	if c.RetryMax == 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 10 * time.Second
	}
}

// Validate reports every problem at once.
func (c PipelineConfig) Validate() error {
	var errs []error
	if c.QueueMessages < 1 {
		errs = append(errs, config.Invalid("queue_messages", "must be at least 1"))
	}
	if c.BatchSize < 1 {
		errs = append(errs, config.Invalid("batch_size", "must be at least 1"))
	}
	if c.FlushInterval <= 0 {
		errs = append(errs, config.Invalid("flush_interval", "must be positive"))
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		errs = append(errs, config.Invalid("retry_max", "retry_min must be positive and retry_max at least retry_min"))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, config.Invalid("drain_timeout", "must not be negative"))
	}
	return errors.Join(errs...)
}

// SourceSpec is one configured source with its normalisation.
type SourceSpec struct {
	Name      string
	Source    Source
	Normalize NormalizeConfig
}

// SinkSpec is the configured sink.
type SinkSpec struct {
	Name string
	Sink Sink
}

// Pipeline moves samples from sources through normalisation and a bounded
// queue to a sink, supervising the sources and retrying the sink.
type Pipeline struct {
	cfg     PipelineConfig
	log     *slog.Logger
	metrics *Metrics
	sources []*sourceRunner
	sink    SinkSpec
	sinkSt  componentState
	queue   chan []Sample
	depth   atomic.Int64
}

// NewPipeline wires sources and a sink. metrics may come from NewMetrics on
// any registry; logger must not be nil.
func NewPipeline(cfg PipelineConfig, sources []SourceSpec, sink SinkSpec, metrics *Metrics, logger *slog.Logger) (*Pipeline, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	p := &Pipeline{
		cfg:     cfg,
		log:     logger,
		metrics: metrics,
		sink:    sink,
		queue:   make(chan []Sample, cfg.QueueMessages),
	}
	p.sinkSt.init(sink.Name, "sink", true)
	for _, s := range sources {
		n, err := NewNormalizer(s.Normalize)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", s.Name, err)
		}
		r := &sourceRunner{p: p, name: s.Name, src: s.Source, norm: n,
			log: logger.With("source", s.Name), bad: newRateLimiter(10 * time.Second)}
		r.state.init(s.Name, "source", false)
		metrics.connected.WithLabelValues(s.Name).Set(0)
		p.sources = append(p.sources, r)
	}
	return p, nil
}

// Run starts every source and the writer and blocks until ctx is done.
// Then it stops the sources, drains the queue into the sink (for at most
// DrainTimeout) and returns.
func (p *Pipeline) Run(ctx context.Context) error {
	writerCtx, cancelWriter := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWriter()
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		p.write(writerCtx)
	}()

	var wg sync.WaitGroup
	for _, r := range p.sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.supervise(ctx)
		}()
	}
	<-ctx.Done()
	wg.Wait() // sources have returned: nothing else will be queued
	close(p.queue)
	p.log.Info("sources stopped; draining queue", "queued_samples", p.depth.Load(), "timeout", p.cfg.DrainTimeout)
	select {
	case <-writerDone:
	case <-time.After(p.cfg.DrainTimeout):
		cancelWriter()
		<-writerDone
	}
	return nil
}

func (p *Pipeline) newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = p.cfg.RetryMin
	b.MaxInterval = p.cfg.RetryMax
	b.RandomizationFactor = 0.5
	b.Multiplier = 2
	b.Reset()
	return b
}

// sleep waits d or until ctx is done, and reports whether the full wait passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (p *Pipeline) write(ctx context.Context) {
	batch := make([]Sample, 0, p.cfg.BatchSize)
	ticker := time.NewTicker(p.cfg.FlushInterval)
	defer ticker.Stop()
	for {
		select {
		case s, ok := <-p.queue:
			if !ok {
				p.flush(ctx, batch)
				return
			}
			batch = append(batch, s...)
			if len(batch) >= p.cfg.BatchSize {
				p.flush(ctx, batch)
				batch = batch[:0]
			}
		case <-ticker.C:
			if len(batch) > 0 {
				p.flush(ctx, batch)
				batch = batch[:0]
			}
		}
	}
}

// flush writes batch, retrying transient errors with backoff until it
// succeeds, the sink refuses the batch, or ctx ends (shutdown deadline).
func (p *Pipeline) flush(ctx context.Context, batch []Sample) {
	if len(batch) == 0 {
		return
	}
	defer p.depth.Add(-int64(len(batch)))
	defer p.metrics.queueDepth.Sub(float64(len(batch)))
	name := p.sink.Name
	var bo *backoff.ExponentialBackOff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := p.sink.Sink.Write(ctx, batch)
		p.metrics.batchLatency.WithLabelValues(name).Observe(time.Since(start).Seconds())
		if err == nil {
			p.metrics.pointsWritten.WithLabelValues(name).Add(float64(len(batch)))
			p.sinkSt.set(true, nil)
			if attempt > 1 {
				p.log.Info("sink recovered", "sink", name, "attempts", attempt)
			}
			return
		}
		retryAfter, retryable := IsRetryable(err)
		if !retryable {
			p.metrics.sinkErrors.WithLabelValues(name, "rejected").Inc()
			p.metrics.dropped.WithLabelValues(name, "rejected").Add(float64(len(batch)))
			p.sinkSt.noteError(err)
			p.log.Error("sink refused a batch; its samples are dropped", "sink", name, "samples", len(batch), "err", err)
			return
		}
		p.metrics.sinkErrors.WithLabelValues(name, "retryable").Inc()
		p.sinkSt.set(false, err)
		if bo == nil {
			bo = p.newBackoff()
		}
		wait := bo.NextBackOff()
		if retryAfter > wait {
			wait = retryAfter
		}
		if attempt == 1 || attempt%10 == 0 {
			p.log.Warn("sink write failed; retrying", "sink", name, "attempt", attempt, "wait", wait, "queued_samples", p.depth.Load(), "err", err)
		}
		if !sleep(ctx, wait) {
			p.metrics.dropped.WithLabelValues(name, "shutdown").Add(float64(len(batch)))
			p.log.Error("drain deadline passed with the sink still failing; samples dropped", "sink", name, "samples", len(batch), "err", err)
			return
		}
	}
}

func (p *Pipeline) enqueue(ctx context.Context, samples []Sample) error {
	select {
	case p.queue <- samples:
		p.depth.Add(int64(len(samples)))
		p.metrics.queueDepth.Add(float64(len(samples)))
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ComponentStatus is the state of one source or sink, for /readyz and the
// status page.
type ComponentStatus struct {
	Name        string    `json:"name"`
	Kind        string    `json:"kind"`
	Up          bool      `json:"up"`
	Since       time.Time `json:"since"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Status returns the state of every source and of the sink.
func (p *Pipeline) Status() []ComponentStatus {
	out := make([]ComponentStatus, 0, len(p.sources)+1)
	for _, r := range p.sources {
		out = append(out, r.state.get())
	}
	return append(out, p.sinkSt.get())
}

// QueuedSamples is the number of samples waiting for the sink.
func (p *Pipeline) QueuedSamples() int64 { return p.depth.Load() }

type componentState struct {
	mu sync.Mutex
	st ComponentStatus
}

func (c *componentState) init(name, kind string, up bool) {
	c.st = ComponentStatus{Name: name, Kind: kind, Up: up, Since: time.Now()}
}

func (c *componentState) set(up bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if up != c.st.Up {
		c.st.Up, c.st.Since = up, time.Now()
	}
	if err != nil {
		c.st.LastError, c.st.LastErrorAt = err.Error(), time.Now()
	}
}

func (c *componentState) noteError(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.LastError, c.st.LastErrorAt = err.Error(), time.Now()
}

func (c *componentState) get() ComponentStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// sourceRunner supervises one source and is the Output it writes to.
type sourceRunner struct {
	p     *Pipeline
	name  string
	src   Source
	norm  *Normalizer
	log   *slog.Logger
	bad   *rateLimiter
	state componentState
}

var _ Output = (*sourceRunner)(nil)

// supervise runs the source until ctx is done, restarting it with capped,
// jittered backoff whenever its connection breaks.
func (r *sourceRunner) supervise(ctx context.Context) {
	bo := r.p.newBackoff()
	for {
		start := time.Now()
		err := r.src.Run(ctx, r)
		if ctx.Err() != nil {
			r.Connected(false, nil)
			return
		}
		if err == nil {
			err = errors.New("source returned without an error before shutdown")
		}
		r.Connected(false, err)
		r.p.metrics.restarts.WithLabelValues(r.name).Inc()
		if time.Since(start) > time.Minute {
			bo.Reset() // it ran well for a while: this is a new outage
		}
		wait := bo.NextBackOff()
		r.log.Warn("source stopped; restarting", "in", wait.Round(time.Millisecond), "err", err)
		if !sleep(ctx, wait) {
			return
		}
	}
}

var problemPool = sync.Pool{New: func() any { s := make([]Problem, 0, 4); return &s }}

// Emit normalises b and queues the result.
func (r *sourceRunner) Emit(ctx context.Context, b Batch) error {
	r.p.metrics.messages.WithLabelValues(r.name).Inc()
	pp := problemPool.Get().(*[]Problem)
	out, problems := r.norm.Normalize(b, make([]Sample, 0, len(b.Samples)), (*pp)[:0])
	for _, pr := range problems {
		r.Bad(pr.Reason, pr.Err)
	}
	*pp = problems[:0]
	problemPool.Put(pp)
	if len(out) == 0 {
		return nil
	}
	if err := r.p.enqueue(ctx, out); err != nil {
		return err
	}
	r.p.metrics.samples.WithLabelValues(r.name).Add(float64(len(out)))
	return nil
}

// Bad counts and logs, rate-limited per reason, an input that was refused.
func (r *sourceRunner) Bad(reason string, err error) {
	r.p.metrics.badInputs.WithLabelValues(r.name, reason).Inc()
	if suppressed, ok := r.bad.allow(reason); ok {
		r.log.Warn("bad input", "reason", reason, "err", err, "suppressed_since_last", suppressed)
	}
}

// Connected records the source's connection state.
func (r *sourceRunner) Connected(up bool, err error) {
	v := 0.0
	if up {
		v = 1
	}
	r.p.metrics.connected.WithLabelValues(r.name).Set(v)
	r.state.set(up, err)
}

// rateLimiter lets one log line per key through per interval and counts
// the ones it held back, so a flood of bad input cannot flood the log.
type rateLimiter struct {
	every time.Duration
	now   func() time.Time // a field so tests need not sleep
	mu    sync.Mutex
	keys  map[string]*rateEntry
}

type rateEntry struct {
	last       time.Time
	suppressed int
}

func newRateLimiter(every time.Duration) *rateLimiter {
	return &rateLimiter{every: every, now: time.Now, keys: map[string]*rateEntry{}}
}

func (l *rateLimiter) allow(key string) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.keys[key]
	if e == nil {
		e = &rateEntry{}
		l.keys[key] = e
	}
	now := l.now()
	if now.Sub(e.last) < l.every {
		e.suppressed++
		return 0, false
	}
	suppressed, e.suppressed, e.last = e.suppressed, 0, now
	return suppressed, true
}
