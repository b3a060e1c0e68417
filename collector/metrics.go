package collector

import (
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/noordoostpolder/shopfloor/collector/queue"
)

// Metrics are the pipeline's Prometheus metrics. They are registered on an
// injected Registerer, never the global one, so tests stay isolated.
type Metrics struct {
	messages       *prometheus.CounterVec
	samples        *prometheus.CounterVec
	badInputs      *prometheus.CounterVec
	connected      *prometheus.GaugeVec
	restarts       *prometheus.CounterVec
	pointsWritten  *prometheus.CounterVec
	sinkErrors     *prometheus.CounterVec
	dropped        *prometheus.CounterVec
	deadLetters    *prometheus.CounterVec
	corruptRecords *prometheus.CounterVec
	batchLatency   *prometheus.HistogramVec
	latency        *prometheus.HistogramVec
	reg            prometheus.Registerer
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
			Help: "Samples given up on by the writer, by reason: unwritable (the sink cannot represent them: a NaN, a tag with control characters; the sink logs which), dead_letter_failed (refused by the sink and the dead-letter file could not be written). Samples dropped because the queue was full are in shopfloor_queue_dropped_samples_total.",
		}, []string{"sink", "reason"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shopfloor_sink_dead_letter_samples_total",
			Help: "Samples the sink refused (HTTP 400: a field type conflict, a bad line), kept in the dead-letter file of the data directory.",
		}, []string{"sink"}),
		corruptRecords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shopfloor_queue_undecodable_records_total",
			Help: "Queue records that passed their checksum but could not be decoded, and were skipped.",
		}, []string{"sink"}),
		batchLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shopfloor_sink_batch_duration_seconds",
			Help:    "Time of one sink write call, successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"sink"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "shopfloor_sink_sample_latency_seconds",
			Help: "Time from a machine sample's source timestamp to the sink confirming it: the end-to-end delay, backlog and clock skew included.",
			// A factor of √2 rather than 2: a p99 read from this (the
			// dashboards' and the loadtest's) is then within ±20 % instead
			// of anywhere in a doubling; 5 ms to about 7 minutes.
			Buckets: prometheus.ExponentialBuckets(0.005, math.Sqrt2, 34),
		}, []string{"sink"}),
		reg: reg,
	}
	reg.MustRegister(m.messages, m.samples, m.badInputs, m.connected, m.restarts,
		m.pointsWritten, m.sinkErrors, m.dropped, m.deadLetters, m.corruptRecords, m.batchLatency, m.latency)
	return m
}

// registerQueue exports a queue's state, read at scrape time so the
// numbers are exact rather than sampled.
func (m *Metrics) registerQueue(sink string, q *queue.Queue) {
	for _, label := range []string{"dead_letter_failed", "unwritable"} {
		m.dropped.WithLabelValues(sink, label)
	}
	m.deadLetters.WithLabelValues(sink)
	m.corruptRecords.WithLabelValues(sink)
	m.pointsWritten.WithLabelValues(sink)
	m.sinkErrors.WithLabelValues(sink, "retryable")
	m.sinkErrors.WithLabelValues(sink, "rejected")
	m.reg.MustRegister(&queueCollector{sink: sink, q: q})
}

var (
	queueRecordsDesc = prometheus.NewDesc("shopfloor_queue_records", "Records (source messages) in the store-and-forward queue, not yet confirmed by the sink.", []string{"sink"}, nil)
	queueSamplesDesc = prometheus.NewDesc("shopfloor_queue_samples", "Samples in the store-and-forward queue, not yet confirmed by the sink.", []string{"sink"}, nil)
	queueBytesDesc   = prometheus.NewDesc("shopfloor_queue_bytes", "Bytes the store-and-forward queue takes on disk.", []string{"sink"}, nil)
	queueAgeDesc     = prometheus.NewDesc("shopfloor_queue_oldest_age_seconds", "Age of the oldest unconfirmed record in the queue; 0 when it is empty.", []string{"sink"}, nil)
	queueDropRecDesc = prometheus.NewDesc("shopfloor_queue_dropped_records_total", "Records dropped, oldest first, because the queue reached max_bytes.", []string{"sink"}, nil)
	queueDropSmpDesc = prometheus.NewDesc("shopfloor_queue_dropped_samples_total", "Samples dropped, oldest first, because the queue reached max_bytes.", []string{"sink"}, nil)
	queueCorruptDesc = prometheus.NewDesc("shopfloor_queue_corrupt_records_total", "Damaged queue records (a torn write at a power cut, a disk error) found and skipped since start.", []string{"sink"}, nil)
)

type queueCollector struct {
	sink string
	q    *queue.Queue
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queueRecordsDesc, queueSamplesDesc, queueBytesDesc, queueAgeDesc, queueDropRecDesc, queueDropSmpDesc, queueCorruptDesc} {
		ch <- d
	}
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.q.Stats()
	age := 0.0
	if !st.Oldest.IsZero() {
		age = max(time.Since(st.Oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(queueRecordsDesc, prometheus.GaugeValue, float64(st.Records), c.sink)
	ch <- prometheus.MustNewConstMetric(queueSamplesDesc, prometheus.GaugeValue, float64(st.Weight), c.sink)
	ch <- prometheus.MustNewConstMetric(queueBytesDesc, prometheus.GaugeValue, float64(st.Bytes), c.sink)
	ch <- prometheus.MustNewConstMetric(queueAgeDesc, prometheus.GaugeValue, age, c.sink)
	ch <- prometheus.MustNewConstMetric(queueDropRecDesc, prometheus.CounterValue, float64(st.DroppedRecords), c.sink)
	ch <- prometheus.MustNewConstMetric(queueDropSmpDesc, prometheus.CounterValue, float64(st.DroppedWeight), c.sink)
	ch <- prometheus.MustNewConstMetric(queueCorruptDesc, prometheus.CounterValue, float64(st.CorruptRecords), c.sink)
}
