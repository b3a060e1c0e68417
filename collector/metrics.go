package collector

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the pipeline's Prometheus metrics. They are registered on an
// injected Registerer, never the global one, so tests stay isolated.
type Metrics struct {
	messages      *prometheus.CounterVec
	samples       *prometheus.CounterVec
	badInputs     *prometheus.CounterVec
	connected     *prometheus.GaugeVec
	restarts      *prometheus.CounterVec
	pointsWritten *prometheus.CounterVec
	sinkErrors    *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	batchLatency  *prometheus.HistogramVec
	queueDepth    prometheus.Gauge
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shopfloor_source_messages_total",
			Help: "Messages (MQTT publishes, OPC UA notification sets) a source delivered to the pipeline; a message refused whole counts only in shopfloor_source_bad_inputs_total.",
		}, []string{"source"}),
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shopfloor_source_samples_total",
			Help: "Samples accepted into the queue per source, after normalisation.",
		}, []string{"source"}),
		badInputs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shopfloor_source_bad_inputs_total",
			Help: "Inputs that could not be used, per source and reason (invalid_json, oversized, wrong_type, ...).",
		}, []string{"source", "reason"}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shopfloor_source_connected",
			Help: "1 while the source is connected to its peer, 0 otherwise.",
		}, []string{"source"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shopfloor_source_restarts_total",
			Help: "Times a source's connection broke and the supervisor started it again.",
		}, []string{"source"}),
		pointsWritten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shopfloor_sink_samples_written_total",
			Help: "Samples the sink confirmed as stored.",
		}, []string{"sink"}),
		sinkErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shopfloor_sink_errors_total",
			Help: "Failed sink writes, by kind: retryable (retried later) or rejected (the batch was refused).",
		}, []string{"sink", "kind"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shopfloor_sink_samples_dropped_total",
			Help: "Samples given up on, by reason: rejected (the database refused the batch) or shutdown (still queued when the drain deadline passed).",
		}, []string{"sink", "reason"}),
		batchLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shopfloor_sink_batch_duration_seconds",
			Help:    "Time of one sink write call, successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"sink"}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shopfloor_pipeline_queue_samples",
			Help: "Samples waiting in the pipeline's queue for the sink.",
		}),
	}
	reg.MustRegister(m.messages, m.samples, m.badInputs, m.connected, m.restarts,
		m.pointsWritten, m.sinkErrors, m.dropped, m.batchLatency, m.queueDepth)
	return m
}
