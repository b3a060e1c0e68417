package dashboards

import (
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/statetimeline"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// sel narrows a metric to the chosen agents. Prometheus adds the instance
// label when it scrapes; the agent itself does not know it.
const sel = `{instance=~"$instance"}`

// promQL fills the selector into expr, where it is written as SEL, so the
// expressions stay readable here.
func promQL(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().
		Datasource(*promDS()).
		Expr(strings.ReplaceAll(expr, "SEL", sel)).
		LegendFormat(legend).
		Range()
}

func promChart(title, desc string, w uint32) *timeseries.PanelBuilder {
	return timeseries.NewPanelBuilder().
		Title(title).Description(desc).
		Span(w).Height(8).
		LineWidth(1).FillOpacity(10).
		ShowPoints(common.VisibilityModeNever).
		Legend(legendTable("lastNotNull", "max")).
		Tooltip(tooltipMulti())
}

func promStat(title, desc string, w uint32) *stat.PanelBuilder {
	return stat.NewPanelBuilder().
		Title(title).Description(desc).
		Span(w).Height(4).
		ReduceOptions(lastValue()).
		GraphMode(common.BigValueGraphModeArea).
		ColorMode(common.BigValueColorModeValue).
		Orientation(common.VizOrientationAuto)
}

// AgentHealth is the agents' own state from Prometheus, for whoever looks
// after the edge boxes: are the sources connected, does data flow, is
// anything refused, is the queue growing, does InfluxDB take the writes.
func AgentHealth() (dashboard.Dashboard, error) {
	b := dashboard.NewDashboardBuilder("shopfloor agent health").
		Uid(AgentUID).
		Description("The shopfloor agents' /metrics, scraped by Prometheus: sources, samples, bad inputs, the store-and-forward queue and the InfluxDB sink.").
		Tags([]string{"shopfloor"}).
		Editable().
		Refresh("30s").
		Time("now-3h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Links(links()).
		WithVariable(datasourceVariable("prometheus", "Prometheus", PrometheusDatasourceUID)).
		WithVariable(dashboard.NewQueryVariableBuilder("instance").
			Label("Agent").
			Datasource(*promDS()).
			Query(dashboard.StringOrMap{String: ptr("label_values(shopfloor_build_info, instance)")}).
			Definition("label_values(shopfloor_build_info, instance)").
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Sort(dashboard.VariableSortNaturalAsc).
			Multi(true).IncludeAll(true).AllValue(".*").
			Current(allSelected()))

	b.WithPanel(promStat("Agents", "Agents whose metrics Prometheus scrapes.", 4).
		WithTarget(promQL(`count(shopfloor_build_infoSEL)`, "agents")).
		GraphMode(common.BigValueGraphModeNone).
		Unit("none").ColorScheme(fixedColor("text")))
	b.WithPanel(promStat("Sources connected", "Sources connected to their broker or server, of all configured.", 4).
		WithTarget(promQL(`sum(shopfloor_source_connectedSEL)`, "connected").RefId("A")).
		WithTarget(promQL(`count(shopfloor_source_connectedSEL)`, "configured").RefId("B")).
		TextMode(common.BigValueTextModeValueAndName).
		GraphMode(common.BigValueGraphModeNone).
		Unit("none").ColorScheme(fixedColor("green")))
	b.WithPanel(promStat("Samples in", "Samples per second accepted into the queue, all sources.", 4).
		WithTarget(promQL(`sum(rate(shopfloor_source_samples_totalSEL[$__rate_interval]))`, "samples/s")).
		Unit("cps").ColorScheme(fixedColor("blue")))
	b.WithPanel(promStat("Bad inputs", "Inputs refused per second: malformed JSON, wrong types, oversized payloads, unknown states.", 4).
		WithTarget(promQL(`sum(rate(shopfloor_source_bad_inputs_totalSEL[$__rate_interval])) or vector(0)`, "bad/s")).
		Unit("cps").Thresholds(thresholds("green", 0.001, "orange")).ColorScheme(thresholdColor()))
	b.WithPanel(promStat("Queued samples", "Samples in the store-and-forward queues, not yet confirmed by InfluxDB.", 4).
		WithTarget(promQL(`sum(shopfloor_queue_samplesSEL)`, "queued")).
		Unit("short").Thresholds(thresholds("green", 10000, "orange", 1000000, "red")).ColorScheme(thresholdColor()))
	b.WithPanel(promStat("Oldest queued", "Age of the oldest sample InfluxDB has not confirmed: how far the database lags behind.", 4).
		WithTarget(promQL(`max(shopfloor_queue_oldest_age_secondsSEL)`, "age")).
		Unit("s").Thresholds(thresholds("green", 60, "orange", 600, "red")).ColorScheme(thresholdColor()))

	b.WithRow(dashboard.NewRowBuilder("Sources"))
	b.WithPanel(statetimeline.NewPanelBuilder().
		Title("Source connected").
		Description("1 while a source is connected to its broker or server.").
		Span(24).Height(6).
		WithTarget(promQL(`shopfloor_source_connectedSEL`, "{{instance}} {{source}}")).
		Mappings([]dashboard.ValueMapping{{ValueMap: &dashboard.ValueMap{Type: dashboard.MappingTypeValueToText, Options: map[string]dashboard.ValueMappingResult{
			"0": {Text: ptr("disconnected"), Color: ptr("red"), Index: ptr(int32(0))},
			"1": {Text: ptr("connected"), Color: ptr("green"), Index: ptr(int32(1))},
		}}}}).
		ColorScheme(thresholdColor()).Thresholds(thresholds("red", 1, "green")).
		ShowValue(common.VisibilityModeNever).
		MergeValues(true).
		FillOpacity(80).
		Tooltip(tooltipMulti()))
	b.WithPanel(promChart("Samples per second", "Samples accepted into the queue per source, and messages received.", 8).
		WithTarget(promQL(`sum by (instance, source) (rate(shopfloor_source_samples_totalSEL[$__rate_interval]))`, "{{instance}} {{source}} samples").RefId("A")).
		WithTarget(promQL(`sum by (instance, source) (rate(shopfloor_source_messages_totalSEL[$__rate_interval]))`, "{{instance}} {{source}} messages").RefId("B")).
		Unit("cps").Min(0))
	b.WithPanel(promChart("Bad inputs by reason", "Inputs refused per second, per source and reason (invalid_json, oversized, wrong_type, no_machine, unknown_state, ...). The agent's log says which topic or node.", 8).
		WithTarget(promQL(`sum by (instance, source, reason) (rate(shopfloor_source_bad_inputs_totalSEL[$__rate_interval]))`, "{{instance}} {{source}} {{reason}}")).
		Unit("cps").Min(0).
		DrawStyle(common.GraphDrawStyleBars).FillOpacity(80))
	b.WithPanel(promChart("Source restarts", "Times a source's connection broke and the supervisor started it again, per interval.", 8).
		WithTarget(promQL(`sum by (instance, source) (increase(shopfloor_source_restarts_totalSEL[$__rate_interval]))`, "{{instance}} {{source}}")).
		Unit("none").Min(0).
		DrawStyle(common.GraphDrawStyleBars).FillOpacity(80))

	b.WithRow(dashboard.NewRowBuilder("Store-and-forward queue"))
	b.WithPanel(promChart("Queue depth", "Samples and records waiting in the queue on disk for InfluxDB's confirmation. A queue that keeps growing means the sink is down or too slow.", 8).
		WithTarget(promQL(`sum by (instance, sink) (shopfloor_queue_samplesSEL)`, "{{instance}} {{sink}} samples").RefId("A")).
		WithTarget(promQL(`sum by (instance, sink) (shopfloor_queue_recordsSEL)`, "{{instance}} {{sink}} records").RefId("B")).
		Unit("short").Min(0))
	b.WithPanel(promChart("Queue age and size", "Age of the oldest unconfirmed record, and the bytes the queue takes on disk (right axis). The queue drops its oldest data at pipeline.queue.max_bytes.", 8).
		WithTarget(promQL(`max by (instance, sink) (shopfloor_queue_oldest_age_secondsSEL)`, "{{instance}} {{sink}} oldest").RefId("A")).
		WithTarget(promQL(`sum by (instance, sink) (shopfloor_queue_bytesSEL)`, "{{instance}} {{sink}} bytes").RefId("B")).
		Unit("s").Min(0).
		OverrideByRegexp("/bytes$/", []dashboard.DynamicConfigValue{{Id: "unit", Value: "bytes"}, {Id: "custom.axisPlacement", Value: "right"}}))
	b.WithPanel(promChart("Data lost or damaged", "Samples dropped because the queue was full, damaged records skipped, and samples dead-lettered (refused by InfluxDB, kept in the dead-letter file), per interval. All should stay at zero.", 8).
		WithTarget(promQL(`sum by (instance, sink) (increase(shopfloor_queue_dropped_samples_totalSEL[$__rate_interval]))`, "{{instance}} {{sink}} dropped (queue full)").RefId("A")).
		WithTarget(promQL(`sum by (instance, sink) (increase(shopfloor_queue_corrupt_records_totalSEL[$__rate_interval]))`, "{{instance}} {{sink}} damaged records").RefId("B")).
		WithTarget(promQL(`sum by (instance, sink) (increase(shopfloor_sink_dead_letter_samples_totalSEL[$__rate_interval]) + increase(shopfloor_sink_samples_dropped_totalSEL[$__rate_interval]))`, "{{instance}} {{sink}} dead-lettered").RefId("C")).
		Unit("none").Min(0).
		DrawStyle(common.GraphDrawStyleBars).FillOpacity(80).
		ColorScheme(fixedColor("red")))

	b.WithRow(dashboard.NewRowBuilder("InfluxDB sink"))
	b.WithPanel(promChart("Samples written per second", "Samples InfluxDB confirmed as stored.", 6).
		WithTarget(promQL(`sum by (instance, sink) (rate(shopfloor_sink_samples_written_totalSEL[$__rate_interval]))`, "{{instance}} {{sink}}")).
		Unit("cps").Min(0))
	b.WithPanel(promChart("Sink errors", "Failed writes per second: retryable (network, 5xx, 429, auth; retried with backoff) and rejected (a refused batch, split and dead-lettered).", 6).
		WithTarget(promQL(`sum by (instance, sink, kind) (rate(shopfloor_sink_errors_totalSEL[$__rate_interval]))`, "{{instance}} {{sink}} {{kind}}")).
		Unit("reqps").Min(0).
		DrawStyle(common.GraphDrawStyleBars).FillOpacity(80).
		ColorScheme(fixedColor("orange")))
	b.WithPanel(promChart("Write duration", "Time of one write request to InfluxDB, 50th and 99th percentile.", 6).
		WithTarget(promQL(`histogram_quantile(0.5, sum by (instance, sink, le) (rate(shopfloor_sink_batch_duration_seconds_bucketSEL[$__rate_interval])))`, "{{instance}} {{sink}} p50").RefId("A")).
		WithTarget(promQL(`histogram_quantile(0.99, sum by (instance, sink, le) (rate(shopfloor_sink_batch_duration_seconds_bucketSEL[$__rate_interval])))`, "{{instance}} {{sink}} p99").RefId("B")).
		Unit("s").Min(0))
	b.WithPanel(promChart("End-to-end latency", "From a sample's source timestamp to InfluxDB's confirmation, 50th and 99th percentile: backlog and clock skew included.", 6).
		WithTarget(promQL(`histogram_quantile(0.5, sum by (instance, sink, le) (rate(shopfloor_sink_sample_latency_seconds_bucketSEL[$__rate_interval])))`, "{{instance}} {{sink}} p50").RefId("A")).
		WithTarget(promQL(`histogram_quantile(0.99, sum by (instance, sink, le) (rate(shopfloor_sink_sample_latency_seconds_bucketSEL[$__rate_interval])))`, "{{instance}} {{sink}} p99").RefId("B")).
		Unit("s").Min(0))

	b.WithRow(dashboard.NewRowBuilder("KPI engine and process"))
	b.WithPanel(promChart("Late samples", "Samples that arrived after their minute's KPIs were final (later than kpi.lateness): stored, but not in the KPIs. A steady rate means kpi.lateness is too short or a clock is off.", 8).
		WithTarget(promQL(`sum by (instance) (rate(shopfloor_kpi_late_samples_totalSEL[$__rate_interval]))`, "{{instance}}")).
		Unit("cps").Min(0))
	b.WithPanel(promChart("Memory", "Resident memory of the agent process and the Go heap in use.", 8).
		WithTarget(promQL(`process_resident_memory_bytesSEL`, "{{instance}} resident").RefId("A")).
		WithTarget(promQL(`go_memstats_heap_inuse_bytesSEL`, "{{instance}} heap in use").RefId("B")).
		Unit("bytes").Min(0))
	b.WithPanel(promChart("CPU and goroutines", "CPU seconds per second used by the agent, and its goroutines (right axis); goroutines that keep rising point to a leak.", 8).
		WithTarget(promQL(`rate(process_cpu_seconds_totalSEL[$__rate_interval])`, "{{instance}} CPU").RefId("A")).
		WithTarget(promQL(`go_goroutinesSEL`, "{{instance}} goroutines").RefId("B")).
		Unit("percentunit").Min(0).
		OverrideByRegexp("/goroutines$/", []dashboard.DynamicConfigValue{{Id: "unit", Value: "none"}, {Id: "custom.axisPlacement", Value: "right"}}))

	return b.Build()
}
