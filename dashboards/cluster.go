package dashboards

import (
	"fmt"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// The firm's side of the benchmark: the agent writes every contribution it
// shares into its own kpi measurement with window "share" and
// machine_type = the machine class (collector/share.LocalWindow), so the
// firm's numbers here are exactly what the cluster received.
const (
	ownWhere     = `"window" = 'share' AND "machine_type" =~ /^$class$/ AND $timeFilter`
	clusterWhere = `"machine_class" =~ /^$class$/ AND $timeFilter`
)

// ownSeries is the firm's own shared values, one series per field.
func ownSeries(fields ...string) string {
	sel := make([]string, len(fields))
	for i, f := range fields {
		sel[i] = fmt.Sprintf(`mean(%q) AS "you: %s"`, f, kpiLabel(f))
	}
	return `SELECT ` + strings.Join(sel, ", ") + ` FROM "kpi" WHERE ` + ownWhere + ` GROUP BY time($__interval) fill(none)`
}

// clusterQuartiles is the cluster's 25th, 50th and 75th percentile of one
// KPI, for the band the firm's line is drawn over.
func clusterQuartiles(kpi string) string {
	return `SELECT mean("p25") AS "cluster p25", mean("p50") AS "cluster median", mean("p75") AS "cluster p75" FROM "benchmark" WHERE ` +
		clusterWhere + ` AND "kpi" = '` + kpi + `' GROUP BY time($__interval) fill(none)`
}

// clusterMedians is the cluster's median of several KPIs, one series each.
func clusterMedians(kpis ...string) string {
	return `SELECT mean("p50") AS "cluster median" FROM "benchmark" WHERE ` + clusterWhere +
		` AND "kpi" =~ /^(` + strings.Join(kpis, "|") + `)$/ GROUP BY time($__interval), "kpi" fill(none)`
}

func kpiLabel(field string) string {
	switch field {
	case "oee":
		return "OEE"
	case "mtbf_s":
		return "MTBF"
	case "mttr_s":
		return "MTTR"
	case "energy_per_good_part_wh":
		return "energy per good part"
	}
	return field
}

// benchmarkChart is a time series of the firm over the cluster: the
// cluster's quartiles as a band, the firm as a heavy line. Its minimum
// interval is the hour, the period of a contribution.
func benchmarkChart(title, desc string, w uint32) *timeseries.PanelBuilder {
	return lineChart(title, desc, w).
		Datasource(mixedDS()).
		Interval("1h").
		ShowPoints(common.VisibilityModeAuto).
		ColorScheme(dashboard.NewFieldColorBuilder().Mode(dashboard.FieldColorModeIdPaletteClassic)).
		OverrideByName("cluster p75", []dashboard.DynamicConfigValue{
			{Id: "custom.fillBelowTo", Value: "cluster p25"},
			{Id: "color", Value: map[string]any{"mode": "fixed", "fixedColor": "#8e8e8e"}},
		}).
		OverrideByName("cluster p25", []dashboard.DynamicConfigValue{
			{Id: "color", Value: map[string]any{"mode": "fixed", "fixedColor": "#8e8e8e"}},
		}).
		OverrideByRegexp("^you.*", []dashboard.DynamicConfigValue{{Id: "custom.lineWidth", Value: 3}})
}

// ClusterBenchmark sets the firm's own KPIs per machine class beside the
// cluster's quartiles for the same class, with how many firms are behind
// them. It reads two InfluxDBs: the firm's own (what it shared) and the
// cluster's (the hub's benchmark measurement).
func ClusterBenchmark() (dashboard.Dashboard, error) {
	classQuery := `SHOW TAG VALUES FROM "kpi" WITH KEY = "machine_type" WHERE "window" = 'share'`
	b := dashboard.NewDashboardBuilder("Cluster benchmark").
		Uid(ClusterUID).
		Description("Your KPIs per machine class beside the cluster's quartiles for the same class. Yours: what this agent shared (the kpi measurement, window share) in your InfluxDB. The cluster's: the hub's benchmark measurement in the cluster's InfluxDB. A class with fewer firms than the hub's k has no cluster figures.").
		Tags([]string{"shopfloor"}).
		Editable().
		Refresh("5m").
		Time("now-30d", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Links(links()).
		WithVariable(datasourceVariable("influxdb", "Your InfluxDB", InfluxDatasourceUID)).
		WithVariable(namedDatasourceVariable(clusterDSVar, "influxdb", "Cluster InfluxDB", ClusterDatasourceUID)).
		WithVariable(dashboard.NewQueryVariableBuilder("class").
			Label("Machine class").
			Datasource(*influxDS()).
			Query(dashboard.StringOrMap{String: ptr(classQuery)}).
			Definition(classQuery).
			Refresh(dashboard.VariableRefreshOnDashboardLoad).
			Sort(dashboard.VariableSortNaturalAsc).
			Multi(true).IncludeAll(true).
			Current(allSelected()))

	b.WithPanel(table.NewPanelBuilder().
		Title("Cluster quartiles, latest period").
		Description("Per machine class and KPI, the newest quartiles the hub published and the number of firms behind them. Never a minimum, maximum or single firm's value.").
		Span(12).Height(9).
		Datasource(*clusterDS()).
		WithTarget(InfluxQL(`SELECT "p25", "p50", "p75", "firms" FROM "benchmark" WHERE ` + clusterWhere + ` GROUP BY "machine_class", "kpi" ORDER BY time DESC LIMIT 1`).OnCluster().Table()).
		Footer(tableFooter()))
	b.WithPanel(table.NewPanelBuilder().
		Title("What you shared").
		Description("Every contribution this agent sent, newest first: exactly these numbers, the class and the hour left the firm (also in <data_dir>/share/contributions.jsonl).").
		Span(12).Height(9).
		WithTarget(InfluxQL(`SELECT "machines", "oee", "availability", "performance", "quality", "mtbf_s", "mttr_s", "energy_per_good_part_wh" FROM "kpi" WHERE ` + ownWhere + ` GROUP BY "machine_type" ORDER BY time DESC LIMIT 50`).Table()).
		Footer(tableFooter()))

	b.WithRow(dashboard.NewRowBuilder("$class").Repeat("class"))
	b.WithPanel(benchmarkChart("OEE, you and the cluster", "Your OEE for the class (the mean of your machines of the class, per hour) over the cluster's 25th to 75th percentile band and median.", 10).
		WithTarget(InfluxQL(ownSeries("oee")).RefID("A").Alias("$col")).
		WithTarget(InfluxQL(clusterQuartiles("oee")).OnCluster().RefID("B").Alias("$col")).
		Unit("percentunit").Decimals(1).Min(0).Max(1))
	b.WithPanel(benchmarkChart("Availability, performance, quality", "Your three OEE factors for the class and the cluster's median of each.", 10).
		WithTarget(InfluxQL(ownSeries("availability", "performance", "quality")).RefID("A").Alias("$col")).
		WithTarget(InfluxQL(clusterMedians("availability", "performance", "quality")).OnCluster().RefID("B").Alias("cluster median: $tag_kpi")).
		Unit("percentunit").Decimals(1).Min(0).Max(1))
	b.WithPanel(stat.NewPanelBuilder().
		Title("Firms in the benchmark").
		Description("How many firms' contributions the newest OEE quartiles of this class are computed from. Below the hub's k there are none.").
		Span(4).Height(8).
		Datasource(*clusterDS()).
		WithTarget(InfluxQL(`SELECT last("firms") AS "firms" FROM "benchmark" WHERE ` + clusterWhere + ` AND "kpi" = 'oee'`).OnCluster()).
		Unit("none").Decimals(0).
		ReduceOptions(lastValue()).
		ColorScheme(fixedColor("blue")).ColorMode(common.BigValueColorModeValue).
		GraphMode(common.BigValueGraphModeNone))
	b.WithPanel(stat.NewPanelBuilder().
		Title("Your machines in it").
		Description("How many of your machines your newest contribution for this class averages.").
		Span(4).Height(8).
		WithTarget(InfluxQL(`SELECT last("machines") AS "machines" FROM "kpi" WHERE ` + ownWhere)).
		Unit("none").Decimals(0).
		ReduceOptions(lastValue()).
		ColorScheme(fixedColor("green")).ColorMode(common.BigValueColorModeValue).
		GraphMode(common.BigValueGraphModeNone))
	b.WithPanel(benchmarkChart("MTBF and MTTR", "Mean time between failures and to repair: yours for the class and the cluster's median.", 10).
		WithTarget(InfluxQL(ownSeries("mtbf_s", "mttr_s")).RefID("A").Alias("$col")).
		WithTarget(InfluxQL(clusterMedians("mtbf_s", "mttr_s")).OnCluster().RefID("B").Alias("cluster median: $tag_kpi")).
		Unit("s").Min(0))
	b.WithPanel(benchmarkChart("Energy per good part", "Your energy per good part for the class over the cluster's 25th to 75th percentile band and median.", 10).
		WithTarget(InfluxQL(ownSeries("energy_per_good_part_wh")).RefID("A").Alias("$col")).
		WithTarget(InfluxQL(clusterQuartiles("energy_per_good_part_wh")).OnCluster().RefID("B").Alias("$col")).
		Unit("watth").Decimals(1).Min(0))

	return b.Build()
}
