package dashboards

import (
	"github.com/grafana/grafana-foundation-sdk/go/bargauge"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/statetimeline"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// overviewWhere selects the machines of the chosen site and lines.
const overviewWhere = `"site" =~ /^$site$/ AND "line" =~ /^$line$/`

// currentShift selects the newest shift row of each series (GROUP BY
// group, may be empty), with fields. The KPI engine stamps a shift row
// with the shift's start and rewrites it as the shift grows, so the newest
// row is the current shift. The "shift" field (the shift's name) is in
// every shift row; selecting it makes the newest row come back even while
// a field such as oee has no value yet in it, so a new shift shows "no
// value" instead of the last shift's number. Panels show only numbers, so
// the name stays out of sight. 25h reaches back over the longest shift
// (a whole day, 25 h when clocks go back); there is deliberately no upper
// bound, so no clock skew hides the newest row.
func currentShift(fields, where, group string) string {
	q := `SELECT "shift", ` + fields + ` FROM "kpi" WHERE "window" = 'shift' AND ` + where + ` AND time > now() - 25h`
	if group != "" {
		q += ` GROUP BY ` + group
	}
	return q + ` ORDER BY time DESC LIMIT 1`
}

// Overview is the shop floor at a glance, for production managers: which
// machine runs, stands still or is in alarm, OEE per machine and line for
// the current shift, parts, alarms and energy per good part.
func Overview() (dashboard.Dashboard, error) {
	b := dashboard.NewDashboardBuilder("Shop floor overview").
		Uid(OverviewUID).
		Description("Machine states, OEE per machine and line for the current shift, parts, alarms and energy per good part. Data: the shopfloor agent's InfluxDB measurements machine and kpi.").
		Tags([]string{"shopfloor"}).
		Editable().
		Refresh("30s").
		Time("now-12h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Links(links()).
		WithVariable(datasourceVariable("influxdb", "InfluxDB", InfluxDatasourceUID)).
		WithVariable(tagValues("site", "Site", "site", "")).
		WithVariable(tagValues("line", "Line", "line", `"site" =~ /^$site$/`).
			Multi(true).IncludeAll(true).AllValue(allLines).
			Current(allSelected()))

	b.WithPanel(stat.NewPanelBuilder().
		Title("Site, current shift").
		Description("The site's OEE and its three factors (ISO 22400-2) in the current shift, from the KPI engine's site roll-up. Empty until the shift has a counted part.").
		Span(10).Height(5).
		WithTarget(InfluxQL(currentShift(
			`"oee" AS "OEE", "availability" AS "Availability", "performance" AS "Performance", "quality" AS "Quality"`,
			`"site" =~ /^$site$/ AND "area" = '' AND "line" = '' AND "machine" = ''`, "")).Alias("$col")).
		Unit("percentunit").Min(0).Max(1).Decimals(1).
		Thresholds(oeeThresholds()).ColorScheme(thresholdColor()).
		ReduceOptions(lastValue()).
		TextMode(common.BigValueTextModeValueAndName).
		ColorMode(common.BigValueColorModeValue).
		GraphMode(common.BigValueGraphModeNone).
		Orientation(common.VizOrientationAuto))

	b.WithPanel(stat.NewPanelBuilder().
		Title("Machine state now").
		Description("Each machine's latest state in the time range.").
		Span(14).Height(5).
		WithTarget(InfluxQL(`SELECT last("state") FROM "machine" WHERE ` + overviewWhere + ` AND $timeFilter GROUP BY "machine"`).Alias("$tag_machine")).
		Mappings(stateMappings()).
		ColorScheme(thresholdColor()).Thresholds(thresholds("#8e8e8e")).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}).Values(false).Fields("/.*/")).
		TextMode(common.BigValueTextModeValueAndName).
		ColorMode(common.BigValueColorModeBackground).
		GraphMode(common.BigValueGraphModeNone).
		Orientation(common.VizOrientationAuto))

	b.WithRow(dashboard.NewRowBuilder("States"))
	b.WithPanel(statetimeline.NewPanelBuilder().
		Title("Machine states").
		Description("State per machine. A state holds until the next one arrives (fill(previous)), so machines that report only on change show correctly.").
		Span(24).Height(9).
		WithTarget(InfluxQL(`SELECT last("state") FROM "machine" WHERE ` + overviewWhere + ` AND $timeFilter GROUP BY time($__interval), "machine" fill(previous)`).Alias("$tag_machine")).
		Mappings(stateMappings()).
		ColorScheme(thresholdColor()).Thresholds(thresholds("#8e8e8e")).
		ShowValue(common.VisibilityModeNever).
		MergeValues(true).
		RowHeight(0.8).
		FillOpacity(80).
		Legend(legendList()).
		Tooltip(tooltipMulti()))

	b.WithRow(dashboard.NewRowBuilder("OEE, current shift"))
	b.WithPanel(bargauge.NewPanelBuilder().
		Title("OEE per machine").
		Description("OEE = availability × performance × quality of each machine in the current shift. Empty while the shift has no counted part.").
		Span(12).Height(9).
		WithTarget(InfluxQL(currentShift(`"oee"`, overviewWhere+` AND "machine" != ''`, `"machine"`)).Alias("$tag_machine")).
		Unit("percentunit").Min(0).Max(1).Decimals(1).
		Thresholds(oeeThresholds()).ColorScheme(thresholdColor()).
		ReduceOptions(lastValue()).
		DisplayMode(common.BarGaugeDisplayModeGradient).
		Orientation(common.VizOrientationHorizontal).
		ShowUnfilled(true))

	b.WithPanel(table.NewPanelBuilder().
		Title("Lines").
		Description("The KPI engine's line roll-ups for the current shift: ratios from the summed seconds and parts of the line's machines, so weighted by time.").
		Span(12).Height(9).
		WithTarget(InfluxQL(currentShift(
			`"oee" AS "OEE", "availability" AS "Availability", "performance" AS "Performance", "quality" AS "Quality", "good" AS "Good", "reject" AS "Reject", "energy_per_good_part_wh" AS "Wh per good part"`,
			overviewWhere+` AND "line" != '' AND "machine" = ''`, `"line"`)).Table()).
		Footer(tableFooter()).
		WithTransformation(dashboard.DataTransformerConfig{Id: "organize", Options: map[string]any{
			"excludeByName": map[string]any{"Time": true},
			"renameByName":  map[string]any{"line": "Line", "shift": "Shift"},
		}}).
		OverrideByRegexp("/^(OEE|Availability|Performance|Quality)$/", []dashboard.DynamicConfigValue{
			{Id: "unit", Value: "percentunit"},
			{Id: "decimals", Value: 1},
			{Id: "thresholds", Value: mustThresholds(oeeThresholds())},
			{Id: "color", Value: map[string]any{"mode": "thresholds"}},
			{Id: "custom.cellOptions", Value: map[string]any{"type": "color-background"}},
		}).
		OverrideByName("Wh per good part", []dashboard.DynamicConfigValue{{Id: "unit", Value: "watth"}, {Id: "decimals", Value: 1}}))

	b.WithRow(dashboard.NewRowBuilder("Production"))
	b.WithPanel(bargauge.NewPanelBuilder().
		Title("Parts good / reject, current shift").
		Description("Parts counted per machine in the current shift (the machine's part_count_good and part_count_reject counters, in planned minutes).").
		Span(8).Height(9).
		WithTarget(InfluxQL(currentShift(`"good", "reject"`, overviewWhere+` AND "machine" != ''`, `"machine"`)).Alias("$tag_machine $col")).
		Unit("none").Decimals(0).Min(0).
		ColorScheme(fixedColor("green")).
		OverrideByRegexp("/reject$/", []dashboard.DynamicConfigValue{{Id: "color", Value: map[string]any{"mode": "fixed", "fixedColor": "red"}}}).
		ReduceOptions(lastValue()).
		DisplayMode(common.BarGaugeDisplayModeBasic).
		Orientation(common.VizOrientationHorizontal).
		ShowUnfilled(true))

	b.WithPanel(timeseries.NewPanelBuilder().
		Title("Parts per hour").
		Description("Good and rejected parts of the chosen machines per hour, from the hourly KPI rows.").
		Span(16).Height(9).
		WithTarget(InfluxQL(`SELECT sum("good") AS "good", sum("reject") AS "reject" FROM "kpi" WHERE "window" = '1h' AND `+overviewWhere+` AND "machine" != '' AND $timeFilter GROUP BY time(1h) fill(none)`).Alias("$col")).
		Unit("none").Decimals(0).Min(0).
		DrawStyle(common.GraphDrawStyleBars).FillOpacity(80).
		Stacking(common.NewStackingConfigBuilder().Mode(common.StackingModeNormal)).
		ColorScheme(fixedColor("green")).
		OverrideByName("reject", []dashboard.DynamicConfigValue{{Id: "color", Value: map[string]any{"mode": "fixed", "fixedColor": "red"}}}).
		Legend(legendList()).
		Tooltip(tooltipMulti()))

	b.WithRow(dashboard.NewRowBuilder("Alarms and energy"))
	b.WithPanel(table.NewPanelBuilder().
		Title("Active alarms").
		Description("Machines whose latest state is alarm, with their latest alarm code and text. The query returns every machine's latest state; the panel keeps the ones in alarm, so an empty table means no alarm, not no data.").
		Span(10).Height(8).
		WithTarget(InfluxQL(`SELECT last("state") AS "state", last("alarm_code") AS "code", last("alarm_text") AS "text" FROM "machine" WHERE ` + overviewWhere + ` AND $timeFilter GROUP BY "machine"`).Table()).
		Footer(tableFooter()).
		WithTransformation(dashboard.DataTransformerConfig{Id: "filterByValue", Options: map[string]any{
			"type":  "include",
			"match": "any",
			"filters": []any{map[string]any{
				"fieldName": "state",
				"config":    map[string]any{"id": "equal", "options": map[string]any{"value": "alarm"}},
			}},
		}}).
		WithTransformation(dashboard.DataTransformerConfig{Id: "organize", Options: map[string]any{
			"excludeByName": map[string]any{"Time": true},
			"indexByName":   map[string]any{"machine": 0, "state": 1, "code": 2, "text": 3},
			"renameByName":  map[string]any{"machine": "Machine", "state": "State", "code": "Alarm", "text": "Text"},
		}}).
		Mappings(stateMappings()).
		NoValue("no active alarm"))

	b.WithPanel(bargauge.NewPanelBuilder().
		Title("Time in alarm, current shift").
		Description("Seconds each machine spent in a failure-category state (alarm by default) in the current shift's planned time.").
		Span(7).Height(8).
		WithTarget(InfluxQL(currentShift(`"alarm_s"`, overviewWhere+` AND "machine" != ''`, `"machine"`)).Alias("$tag_machine")).
		Unit("s").Min(0).
		ColorScheme(fixedColor("red")).
		ReduceOptions(lastValue()).
		DisplayMode(common.BarGaugeDisplayModeBasic).
		Orientation(common.VizOrientationHorizontal))

	b.WithPanel(bargauge.NewPanelBuilder().
		Title("Energy per good part, current shift").
		Description("energy_wh used by each machine in the current shift divided by its good parts. Needs an energy_wh meter signal.").
		Span(7).Height(8).
		WithTarget(InfluxQL(currentShift(`"energy_per_good_part_wh"`, overviewWhere+` AND "machine" != ''`, `"machine"`)).Alias("$tag_machine")).
		Unit("watth").Decimals(1).Min(0).
		ColorScheme(fixedColor("blue")).
		ReduceOptions(lastValue()).
		DisplayMode(common.BarGaugeDisplayModeBasic).
		Orientation(common.VizOrientationHorizontal))

	return b.Build()
}

// mustThresholds builds a thresholds config for an override, whose values
// are untyped JSON in the SDK.
func mustThresholds(b interface {
	Build() (dashboard.ThresholdsConfig, error)
}) dashboard.ThresholdsConfig {
	t, err := b.Build()
	if err != nil {
		panic(err) // built from constants; a failure is a programming error
	}
	return t
}
