package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/noordoostpolder/shopfloor/adapters/influxdb"
	"github.com/noordoostpolder/shopfloor/adapters/mqtt"
	"github.com/noordoostpolder/shopfloor/adapters/opcua"
	"github.com/noordoostpolder/shopfloor/adapters/sparkplug"
	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/kpi"
	"github.com/noordoostpolder/shopfloor/collector/live"
	"github.com/noordoostpolder/shopfloor/collector/share"
)

// Agent is one running edge agent: its pipeline and its HTTP listener.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	pipeline *collector.Pipeline
	registry *prometheus.Registry
	listener net.Listener
	kpi      *kpi.Engine   // nil when KPIs are off
	share    *share.Sharer // nil when cluster sharing is off
	live     *live.View
	sources  map[string]collector.Source
	started  time.Time
}

// NewAgent builds every source and the sink from a validated config and
// binds the HTTP listener, so a port already in use fails before any data
// is read.
func NewAgent(cfg Config, logger *slog.Logger) (*Agent, error) {
	if err := os.MkdirAll(cfg.Agent.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("agent.data_dir: %w; create it or point SHOPFLOOR_DATA_DIR at a writable folder", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfoMetric(),
	)

	sources := make([]collector.SourceSpec, 0, len(cfg.Sources))
	byName := map[string]collector.Source{}
	for _, sc := range cfg.Sources {
		src, err := newSource(sc, cfg.Agent.DataDir, logger.With("source", sc.Name))
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", sc.Name, err)
		}
		sources = append(sources, collector.SourceSpec{Name: sc.Name, Source: src, Normalize: sc.normalize()})
		byName[sc.Name] = src
	}
	sink, err := influxdb.New(*cfg.Sink.InfluxDB, influxdb.WithLogger(logger.With("sink", "influxdb")))
	if err != nil {
		return nil, fmt.Errorf("sink influxdb: %w", err)
	}
	cfg.Pipeline.Queue.Dir = filepath.Join(cfg.Agent.DataDir, "queue", "influxdb")
	cfg.Pipeline.DeadLetterDir = filepath.Join(cfg.Agent.DataDir, "dead-letter")
	p, err := collector.NewPipeline(cfg.Pipeline, sources, collector.SinkSpec{Name: "influxdb", Sink: sink}, collector.NewMetrics(reg), logger)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: logger, pipeline: p, registry: reg, started: time.Now(), live: live.New(), sources: byName}
	p.Observe(a.live.Observe)
	if cfg.KPI.Enabled {
		emit := p.Append
		if cfg.Share.Enabled {
			// What is shared also goes to the firm's own InfluxDB, for the
			// cluster benchmark dashboard.
			a.share, err = share.New(cfg.Share, cfg.Agent.DataDir, logger.With("component", "share"), share.WithLocalCopy(p.Append))
			if err != nil {
				return nil, fmt.Errorf("share: %w", err)
			}
			registerShareMetrics(reg, a.share)
			// The sharer sees every KPI row the sink gets.
			emit = func(rows []collector.Sample) error {
				a.share.Observe(rows)
				return p.Append(rows)
			}
		}
		a.kpi, err = kpi.New(cfg.KPI, filepath.Join(cfg.Agent.DataDir, "kpi"), emit, logger.With("component", "kpi"))
		if err != nil {
			return nil, fmt.Errorf("kpi: %w", err)
		}
		p.Observe(func(_ string, samples []collector.Sample) { a.kpi.Observe(samples) })
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "shopfloor_kpi_late_samples_total",
			Help: "Samples that arrived after their minute's KPIs were final (later than kpi.lateness); they are stored but not in the KPIs.",
		}, func() float64 { return float64(a.kpi.TooLate()) }))
	}
	a.listener, err = net.Listen("tcp", cfg.Agent.HTTP.Listen)
	if err != nil {
		return nil, fmt.Errorf("agent.http.listen: %w; choose another port with SHOPFLOOR_HTTP", err)
	}
	return a, nil
}

// newSource builds the source of whichever protocol section is set.
func newSource(sc SourceConfig, dataDir string, logger *slog.Logger) (collector.Source, error) {
	switch {
	case sc.Sparkplug != nil:
		return sparkplug.New(*sc.Sparkplug, logger)
	case sc.OPCUA != nil:
		return opcua.New(*sc.OPCUA, dataDir, logger)
	}
	// The record of its broker sessions lets a changed config retire the
	// ones it no longer uses.
	return mqtt.New(*sc.MQTT, logger, mqtt.WithStateDir(filepath.Join(dataDir, "mqtt", sc.Name)))
}

// badNodeReporter is a source that can name the nodes it cannot read (the
// OPC UA source).
type badNodeReporter interface {
	BadNodes() []opcua.BadNode
}

func (a *Agent) badNodes(source string) []opcua.BadNode {
	if r, ok := a.sources[source].(badNodeReporter); ok {
		return r.BadNodes()
	}
	return nil
}

// Addr is the HTTP listener's address, useful when the config asked for
// port 0.
func (a *Agent) Addr() net.Addr { return a.listener.Addr() }

// Run serves HTTP and runs the pipeline until ctx is done, then drains the
// pipeline and closes the listener. The listener stays up while draining,
// so /readyz shows the shutdown.
func (a *Agent) Run(ctx context.Context) error {
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
	httpErr := make(chan error, 1)
	go func() { httpErr <- srv.Serve(a.listener) }()
	a.log.Info("agent started", "status_page", "http://"+a.listener.Addr().String()+"/", "sources", len(a.cfg.Sources), "data_dir", a.cfg.Agent.DataDir)
	if !loopbackListen(a.cfg.Agent.HTTP.Listen) && !a.cfg.Agent.HTTP.Auth.enabled() {
		a.log.Warn("the status page is reachable from other hosts without a password; set agent.http.auth", "listen", a.cfg.Agent.HTTP.Listen)
	}

	kpiDone := make(chan struct{})
	if a.kpi != nil {
		go func() {
			defer close(kpiDone)
			a.kpi.Tick(ctx)
		}()
	} else {
		close(kpiDone)
	}
	shareDone := make(chan error, 1)
	if a.share != nil {
		go func() { shareDone <- a.share.Run(ctx) }()
	} else {
		shareDone <- nil
	}
	runErr := a.pipeline.Run(ctx)
	<-kpiDone
	if a.kpi != nil {
		// After the pipeline: every sample the sources accepted has been
		// seen, so a restart continues exactly from here.
		if err := a.kpi.Save(); err != nil {
			runErr = errors.Join(runErr, err)
		}
	}
	runErr = errors.Join(runErr, <-shareDone)
	if a.share != nil {
		// After the KPI engine saw the drained samples: a contribution that
		// became ready meanwhile is queued and sent after the next start.
		runErr = errors.Join(runErr, a.share.Close())
	}

	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx)
	if err := <-httpErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return errors.Join(runErr, fmt.Errorf("http listener: %w", err))
	}
	return runErr
}

// Handler serves /metrics, /healthz and /readyz.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelError),
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", a.serveReady)
	// The page and its API only read: nothing served here changes the
	// agent.
	mux.Handle("GET /", a.requireAuth(http.HandlerFunc(a.servePage)))
	mux.Handle("GET /api/status", a.requireAuth(http.HandlerFunc(a.serveStatus)))
	if a.cfg.Agent.HTTP.Pprof {
		mux.Handle("GET /debug/pprof/", a.requireAuth(http.HandlerFunc(pprof.Index)))
		mux.Handle("GET /debug/pprof/cmdline", a.requireAuth(http.HandlerFunc(pprof.Cmdline)))
		mux.Handle("GET /debug/pprof/profile", a.requireAuth(http.HandlerFunc(pprof.Profile)))
		mux.Handle("GET /debug/pprof/symbol", a.requireAuth(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("GET /debug/pprof/trace", a.requireAuth(http.HandlerFunc(pprof.Trace)))
	}
	return mux
}

// Readiness is the /readyz body.
type Readiness struct {
	Ready bool `json:"ready"`
	// NotReady says, one line per component, what is down and why.
	NotReady []string `json:"not_ready,omitempty"`
	// Warnings are problems that do not stop data: an OPC UA node that is
	// missing or refused while the source's other nodes flow.
	Warnings []string `json:"warnings,omitempty"`
	// QueuedSamples wait in the store-and-forward queue; the oldest of
	// them was queued OldestQueuedSeconds ago.
	QueuedSamples       int64                       `json:"queued_samples"`
	OldestQueuedSeconds float64                     `json:"oldest_queued_seconds"`
	Components          []collector.ComponentStatus `json:"components"`
}

func (a *Agent) readiness() Readiness {
	q := a.pipeline.Queue()
	r := Readiness{Ready: true, QueuedSamples: q.Weight, Components: a.pipeline.Status()}
	if !q.Oldest.IsZero() {
		r.OldestQueuedSeconds = max(time.Since(q.Oldest).Round(time.Millisecond).Seconds(), 0)
	}
	for _, c := range r.Components {
		if c.Up {
			continue
		}
		r.Ready = false
		msg := fmt.Sprintf("%s %s: down for %s", c.Kind, c.Name, time.Since(c.Since).Round(time.Second))
		if c.Kind == "sink" {
			msg += fmt.Sprintf(", %d samples queued", q.Weight)
		}
		if c.LastError != "" {
			msg += ": " + c.LastError
		}
		r.NotReady = append(r.NotReady, msg)
	}
	for _, sc := range a.cfg.Sources {
		for _, b := range a.badNodes(sc.Name) {
			r.Warnings = append(r.Warnings, fmt.Sprintf("source %s: node %s: %s since %s: %s", sc.Name, b.Node, b.Reason, b.Since.Format(time.RFC3339), b.Error))
		}
	}
	return r
}

func (a *Agent) serveReady(w http.ResponseWriter, _ *http.Request) {
	r := a.readiness()
	w.Header().Set("Content-Type", "application/json")
	if !r.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(r)
}

func buildInfoMetric() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "shopfloor_build_info",
		Help:        "Always 1; the labels say which build is running.",
		ConstLabels: prometheus.Labels{"version": version, "commit": commit(), "goversion": goVersion()},
	})
	g.Set(1)
	return g
}

// registerShareMetrics exposes the sharer's traffic, so an operator sees
// contributions waiting when the cluster broker is unreachable.
func registerShareMetrics(reg prometheus.Registerer, s *share.Sharer) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shopfloor_share_queued_contributions",
			Help: "Contributions waiting in the share queue for the cluster broker.",
		}, func() float64 { return float64(s.Stats().Queued) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "shopfloor_share_sent_contributions_total",
			Help: "Contributions the cluster broker acknowledged since the agent started.",
		}, func() float64 { return float64(s.Stats().Sent) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "shopfloor_share_send_failures_total",
			Help: "Failed connections or publishes to the cluster broker since the agent started; contributions stay queued.",
		}, func() float64 { return float64(s.Stats().SendFailures) }),
	)
}
