package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/noordoostpolder/shopfloor/collector/config"
	"github.com/noordoostpolder/shopfloor/collector/queue"
)

// PipelineConfig tunes the store-and-forward queue and the writer. The
// zero value of each field means its default.
type PipelineConfig struct {
	// BatchSize is the most samples per sink write. It is not read from
	// the pipeline's YAML section: the agent takes it from the sink's
	// batch_size, so one knob sizes both the batch and the request.
	BatchSize int `yaml:"-"`
	// FlushInterval is how long a partial batch may wait for more samples;
	// like BatchSize it comes from the sink's section.
	FlushInterval time.Duration `yaml:"-"`
	// MaxInFlight is how many batches are written at once, also from the
	// sink's section. They are acknowledged in queue order whatever order
	// they finish in.
	MaxInFlight int `yaml:"-"`
	// Queue is the store-and-forward buffer on disk.
	Queue QueueConfig `yaml:"queue"`
	// DeadLetterDir receives batches the sink refused; the agent puts it
	// in its data directory.
	DeadLetterDir string `yaml:"-"`
	// DrainRate caps the samples per second written while a backlog is
	// drained, so a database that has just come back is not flattened.
	// While the queue holds less than two batches there is no cap. 0
	// means the default; -1 means no cap.
	DrainRate int `yaml:"drain_rate"`
	// RetryMin and RetryMax bound the exponential backoff, with jitter, of
	// sink retries and source restarts.
	RetryMin time.Duration `yaml:"retry_min"`
	RetryMax time.Duration `yaml:"retry_max"`
	// DrainTimeout is how long shutdown keeps writing what is queued
	// before it stops; what is left stays on disk for the next start.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// QueueConfig is the store-and-forward buffer.
type QueueConfig struct {
	// Dir is set by the agent, inside its data directory.
	Dir string `yaml:"-"`
	// MaxBytes bounds the queue on disk; past it the oldest data is
	// dropped, counted and logged.
	MaxBytes config.ByteSize `yaml:"max_bytes"`
	// SegmentBytes is the size of one segment file, the unit in which
	// delivered data is deleted and, when full, old data dropped.
	SegmentBytes config.ByteSize `yaml:"segment_bytes"`
	// Fsync is "batch" (every write is on disk before the source
	// acknowledges its message: safe against power loss, slower) or a
	// duration such as 100ms (written at once, so safe against the agent
	// being killed, and synced at that interval: a power cut may lose
	// that long).
	Fsync string `yaml:"fsync"`
}

// Defaults of the queue and writer. 100 ms of exposure to a power cut
// buys an order of magnitude in throughput over a sync per write, which
// on a small box's SD card or SSD costs about half a millisecond.
const (
	DefaultQueueMaxBytes     = config.ByteSize(1 << 30)
	DefaultQueueSegmentBytes = config.ByteSize(8 << 20)
	DefaultFsync             = "100ms"
	DefaultDrainRate         = 500000
)

// SetDefaults fills unset fields. The defaults favour throughput at a
// bounded latency: 5000 samples is where InfluxDB's write cost per point
// levels off, and a second is well below any dashboard's refresh.
func (c *PipelineConfig) SetDefaults() {
	if c.BatchSize == 0 {
		c.BatchSize = 5000
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = time.Second
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 2
	}
	if c.Queue.MaxBytes == 0 {
		c.Queue.MaxBytes = DefaultQueueMaxBytes
	}
	if c.Queue.SegmentBytes == 0 {
		c.Queue.SegmentBytes = DefaultQueueSegmentBytes
	}
	if c.Queue.Fsync == "" {
		c.Queue.Fsync = DefaultFsync
	}
	if c.DrainRate == 0 {
		c.DrainRate = DefaultDrainRate
	}
	if c.RetryMin == 0 {
		c.RetryMin = 100 * time.Millisecond
	}
	if c.RetryMax == 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 5 * time.Second
	}
}

// fsyncInterval reads Fsync: 0 for "batch".
func (c QueueConfig) fsyncInterval() (time.Duration, error) {
	if c.Fsync == "batch" {
		return 0, nil
	}
	d, err := time.ParseDuration(c.Fsync)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is neither \"batch\" nor a positive duration such as 100ms", c.Fsync)
	}
	return d, nil
}

// Validate reports every problem at once.
func (c PipelineConfig) Validate() error {
	var errs []error
	if c.BatchSize < 1 {
		errs = append(errs, config.Invalid("batch_size", "must be at least 1"))
	}
	if c.MaxInFlight < 1 {
		errs = append(errs, config.Invalid("max_in_flight", "must be at least 1"))
	}
	if c.FlushInterval <= 0 {
		errs = append(errs, config.Invalid("flush_interval", "must be positive"))
	}
	if c.Queue.SegmentBytes < 64<<10 {
		errs = append(errs, config.Invalid("queue.segment_bytes", "must be at least 64KiB, got %s", c.Queue.SegmentBytes))
	} else if c.Queue.MaxBytes < 2*c.Queue.SegmentBytes {
		errs = append(errs, config.Invalid("queue.max_bytes", "must be at least twice queue.segment_bytes (%s), got %s", c.Queue.SegmentBytes, c.Queue.MaxBytes))
	}
	if _, err := c.Queue.fsyncInterval(); err != nil {
		errs = append(errs, config.Invalid("queue.fsync", "%v", err))
	}
	if c.DrainRate < -1 {
		errs = append(errs, config.Invalid("drain_rate", "must be positive (samples per second), or -1 for no cap"))
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

// Pipeline moves samples from sources through normalisation into a
// store-and-forward queue on disk, and from there to a sink, supervising
// the sources and retrying the sink.
type Pipeline struct {
	cfg     PipelineConfig
	log     *slog.Logger
	metrics *Metrics
	sources []*sourceRunner
	sink    SinkSpec
	sinkSt  componentState
	queue   *queue.Queue
	dead    *deadLetters
	limiter *rate.Limiter
	observe []func(source string, samples []Sample)
}

// Observe has fn called with every source's normalised samples once they
// are queued; the KPI engine and the status page listen this way. fn must
// not keep the slice. Call it before Run.
func (p *Pipeline) Observe(fn func(source string, samples []Sample)) {
	p.observe = append(p.observe, fn)
}

// maxOrigins bounds the per-source origin counters: a source with ever
// new topics must not grow the agent.
const maxOrigins = 10000

// OriginCount is how many messages came from one origin (an MQTT topic).
type OriginCount struct {
	Origin   string `json:"origin"`
	Messages int64  `json:"messages"`
}

// Origins returns, per source, its origins and their message counts.
func (p *Pipeline) Origins() map[string][]OriginCount {
	out := map[string][]OriginCount{}
	for _, r := range p.sources {
		var list []OriginCount
		r.origins.Range(func(k, v any) bool {
			list = append(list, OriginCount{Origin: k.(string), Messages: v.(*atomic.Int64).Load()})
			return true
		})
		sort.Slice(list, func(i, j int) bool { return list[i].Origin < list[j].Origin })
		out[r.name] = list
	}
	return out
}

// Append queues samples the agent derived itself (KPI rows) for the sink.
func (p *Pipeline) Append(samples []Sample) error {
	if len(samples) == 0 {
		return nil
	}
	bp := recordPool.Get().(*[]byte)
	defer recordPool.Put(bp)
	*bp = AppendRecord((*bp)[:0], samples)
	return p.queue.Append(*bp, len(samples))
}

// NewPipeline wires sources and a sink and opens the queue in
// cfg.Queue.Dir, recovering what an earlier run left there. metrics may
// come from NewMetrics on any registry; logger must not be nil.
func NewPipeline(cfg PipelineConfig, sources []SourceSpec, sink SinkSpec, metrics *Metrics, logger *slog.Logger) (*Pipeline, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	if cfg.Queue.Dir == "" || cfg.DeadLetterDir == "" {
		return nil, errors.New("pipeline: the queue and dead-letter directories must be set")
	}
	p := &Pipeline{
		cfg:     cfg,
		log:     logger,
		metrics: metrics,
		sink:    sink,
		dead:    &deadLetters{dir: cfg.DeadLetterDir, sink: sink.Name},
	}
	if cfg.DrainRate > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(cfg.DrainRate), max(cfg.DrainRate, cfg.BatchSize))
	}
	p.sinkSt.init(sink.Name, "sink", true)
	for _, s := range sources {
		n, err := NewNormalizer(s.Normalize)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", s.Name, err)
		}
		r := &sourceRunner{p: p, name: s.Name, src: s.Source, norm: n,
			log: logger.With("source", s.Name), bad: newRateLimiter(10 * time.Second),
			messages: metrics.messages.WithLabelValues(s.Name), samples: metrics.samples.WithLabelValues(s.Name)}
		r.state.init(s.Name, "source", false)
		metrics.connected.WithLabelValues(s.Name).Set(0)
		p.sources = append(p.sources, r)
	}
	fsync, _ := cfg.Queue.fsyncInterval()
	q, err := queue.Open(queue.Options{
		Dir:           cfg.Queue.Dir,
		SegmentBytes:  int64(cfg.Queue.SegmentBytes),
		MaxBytes:      int64(cfg.Queue.MaxBytes),
		FsyncInterval: fsync,
		Logger:        logger.With("sink", sink.Name),
	})
	if err != nil {
		return nil, fmt.Errorf("pipeline: open the queue in %s: %w", cfg.Queue.Dir, err)
	}
	p.queue = q
	if st := q.Stats(); st.Records > 0 {
		logger.Info("queue holds data from an earlier run; it is sent first", "sink", sink.Name,
			"records", st.Records, "samples", st.Weight, "oldest", st.Oldest)
	}
	metrics.registerQueue(sink.Name, q)
	return p, nil
}

// Run starts every source and the writer and blocks until ctx is done.
// Then it stops the sources, so everything they accepted is in the queue,
// lets the writer deliver what it can within DrainTimeout, syncs the
// queue and returns. What was not delivered is sent after the next start.
func (p *Pipeline) Run(ctx context.Context) error {
	writerCtx, cancelWriter := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWriter()
	draining := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		p.write(writerCtx, draining)
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
	close(draining)
	st := p.queue.Stats()
	p.log.Info("sources stopped; delivering what is queued", "queued_samples", st.Weight, "timeout", p.cfg.DrainTimeout)
	select {
	case <-writerDone:
	case <-time.After(p.cfg.DrainTimeout):
		cancelWriter()
		<-writerDone
	}
	st = p.queue.Stats()
	if err := p.queue.Close(); err != nil {
		return fmt.Errorf("pipeline: close the queue: %w", err)
	}
	if st.Records > 0 {
		p.log.Info("queue synced; the rest is sent after the next start", "queued_samples", st.Weight)
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

// Queue reports the store-and-forward queue's backlog and losses.
func (p *Pipeline) Queue() queue.Stats { return p.queue.Stats() }

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
	// The source's counters, looked up once rather than per message.
	messages, samples prometheus.Counter
	origins           sync.Map // origin -> *atomic.Int64
	nOrigins          atomic.Int64
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

var recordPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

var samplePool = sync.Pool{New: func() any { s := make([]Sample, 0, 16); return &s }}

// Emit normalises the batches and appends the result to the queue as one
// record. It returns once the record is written, so the source may then
// acknowledge its messages.
func (r *sourceRunner) Emit(ctx context.Context, bs ...Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.messages.Add(float64(len(bs)))
	pp := problemPool.Get().(*[]Problem)
	sp := samplePool.Get().(*[]Sample)
	defer func() { *sp = (*sp)[:0]; samplePool.Put(sp) }()
	out, problems := (*sp)[:0], (*pp)[:0]
	for _, b := range bs {
		r.countOrigin(b.Origin)
		out, problems = r.norm.Normalize(b, out, problems)
	}
	*sp = out
	for _, pr := range problems {
		r.Bad(pr.Reason, pr.Err)
	}
	*pp = problems[:0]
	problemPool.Put(pp)
	if len(out) == 0 {
		return nil
	}
	bp := recordPool.Get().(*[]byte)
	rec := AppendRecord((*bp)[:0], out)
	err := r.p.queue.Append(rec, len(out))
	*bp = rec[:0]
	recordPool.Put(bp)
	if err != nil {
		return fmt.Errorf("source %s: queue: %w", r.name, err)
	}
	r.samples.Add(float64(len(out)))
	for _, fn := range r.p.observe {
		fn(r.name, out)
	}
	return nil
}

// countOrigin counts a message of origin, for the status page; beyond
// maxOrigins new origins are not tracked.
func (r *sourceRunner) countOrigin(origin string) {
	if c, ok := r.origins.Load(origin); ok {
		c.(*atomic.Int64).Add(1)
	} else if r.nOrigins.Load() < maxOrigins {
		c, loaded := r.origins.LoadOrStore(origin, new(atomic.Int64))
		if !loaded {
			r.nOrigins.Add(1)
		}
		c.(*atomic.Int64).Add(1)
	}
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
