package dashboards

import (
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/statetimeline"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// machineWhere selects the one machine of the detail dashboard. The site
// and line terms are redundant for a machine name that is unique, and keep
// two machines of the same name on different lines apart.
const machineWhere = `"site" =~ /^$site$/ AND "line" =~ /^$line$/ AND "machine" =~ /^$machine$/`

// Panels of one machine type say so in their query: a CNC has no TCP
// speed, so on a robot those panels are rightly empty, and the
// integration test reads this term to know which panels must have data.
const (
	cncWhere   = machineWhere + ` AND "machine_type" = 'cnc'`
	robotWhere = machineWhere + ` AND "machine_type" = 'robot'`
)

// series is the usual raw-signal query: one value per $__interval, the
// mean of the samples in it.
func series(fields, where string) string {
	return `SELECT ` + fields + ` FROM "machine" WHERE ` + where + ` AND $timeFilter GROUP BY time($__interval) fill(null)`
}

// hourly selects fields of the machine's hourly KPI rows.
func hourly(fields string) string {
	return `SELECT ` + fields + ` FROM "kpi" WHERE "window" = '1h' AND ` + machineWhere + ` AND $timeFilter`
}

func lineChart(title, desc string, w uint32) *timeseries.PanelBuilder {
	return timeseries.NewPanelBuilder().
		Title(title).Description(desc).
		Span(w).Height(8).
		LineWidth(1).FillOpacity(10).
		ShowPoints(common.VisibilityModeNever).
		SpanNulls(common.BoolOrFloat64{Float64: ptr(120000.0)}).
		Legend(legendList()).
		Tooltip(tooltipMulti())
}

// MachineDetail is one machine in depth: state and program, the CNC's
// spindle and feed, the robot's TCP speed, joint torques and cycles, power
// and energy, and its hourly KPIs.
func MachineDetail() (dashboard.Dashboard, error) {
	b := dashboard.NewDashboardBuilder("Machine detail").
		Uid(MachineUID).
		Description("One machine's signals and KPIs. CNC panels stay empty for a robot and robot panels for a CNC. Data: the shopfloor agent's InfluxDB measurements machine and kpi.").
		Tags([]string{"shopfloor"}).
		Editable().
		Refresh("30s").
		Time("now-6h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Links(links()).
		WithVariable(datasourceVariable("influxdb", "InfluxDB", InfluxDatasourceUID)).
		WithVariable(tagValues("site", "Site", "site", "")).
		WithVariable(tagValues("line", "Line", "line", `"site" =~ /^$site$/`).
			IncludeAll(true).AllValue(allLines).
			Current(allSelected())).
		WithVariable(tagValues("machine", "Machine", "machine", `"site" =~ /^$site$/ AND "line" =~ /^$line$/`))

	stateStat := func(title, field string, w uint32) *stat.PanelBuilder {
		return stat.NewPanelBuilder().
			Title(title).Span(w).Height(4).
			WithTarget(InfluxQL(`SELECT last("` + field + `") FROM "machine" WHERE ` + machineWhere + ` AND $timeFilter`).Alias(field)).
			ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}).Values(false).Fields("/.*/")).
			TextMode(common.BigValueTextModeValue).
			GraphMode(common.BigValueGraphModeNone).
			Orientation(common.VizOrientationAuto)
	}
	shiftStat := func(title, desc, field string) *stat.PanelBuilder {
		return stat.NewPanelBuilder().
			Title(title).Description(desc).Span(4).Height(4).
			WithTarget(InfluxQL(currentShift(`"`+field+`"`, machineWhere, "")).Alias(field)).
			ReduceOptions(lastValue()).
			TextMode(common.BigValueTextModeValue).
			GraphMode(common.BigValueGraphModeNone).
			Orientation(common.VizOrientationAuto)
	}

	b.WithPanel(stateStat("State", "state", 4).
		Mappings(stateMappings()).
		ColorScheme(thresholdColor()).Thresholds(thresholds("#8e8e8e")).
		ColorMode(common.BigValueColorModeBackground))
	b.WithPanel(stateStat("Program", "program", 4).ColorMode(common.BigValueColorModeNone))
	b.WithPanel(shiftStat("OEE, current shift", "Availability × performance × quality in the current shift.", "oee").
		Unit("percentunit").Decimals(1).Min(0).Max(1).
		Thresholds(oeeThresholds()).ColorScheme(thresholdColor()).
		ColorMode(common.BigValueColorModeValue))
	b.WithPanel(shiftStat("Good parts, current shift", "Good parts counted in the current shift's planned time.", "good").
		Unit("none").Decimals(0).ColorScheme(fixedColor("green")).ColorMode(common.BigValueColorModeValue))
	b.WithPanel(shiftStat("Rejects, current shift", "Rejected parts counted in the current shift's planned time.", "reject").
		Unit("none").Decimals(0).ColorScheme(fixedColor("red")).ColorMode(common.BigValueColorModeValue))
	b.WithPanel(shiftStat("Energy per good part, current shift", "Energy used in the current shift divided by its good parts.", "energy_per_good_part_wh").
		Unit("watth").Decimals(1).ColorScheme(fixedColor("blue")).ColorMode(common.BigValueColorModeValue))

	b.WithPanel(statetimeline.NewPanelBuilder().
		Title("State and program").
		Description("The machine's state and the part program it runs. Each holds until the next value arrives.").
		Span(24).Height(5).
		WithTarget(InfluxQL(`SELECT last("state") FROM "machine" WHERE ` + machineWhere + ` AND $timeFilter GROUP BY time($__interval) fill(previous)`).RefID("A").Alias("state")).
		WithTarget(InfluxQL(`SELECT last("program") FROM "machine" WHERE ` + machineWhere + ` AND $timeFilter GROUP BY time($__interval) fill(previous)`).RefID("B").Alias("program")).
		Mappings(stateMappings()).
		ColorScheme(dashboard.NewFieldColorBuilder().Mode(dashboard.FieldColorModeIdPaletteClassic)).
		ShowValue(common.VisibilityModeAuto).
		MergeValues(true).
		FillOpacity(80).
		Legend(common.NewVizLegendOptionsBuilder().ShowLegend(false)).
		Tooltip(tooltipMulti()))

	b.WithPanel(lineChart("OEE per hour", "OEE and its factors of each hour, from the hourly KPI rows.", 12).
		WithTarget(InfluxQL(hourly(`"oee" AS "OEE", "availability" AS "availability", "performance" AS "performance", "quality" AS "quality"`)).Alias("$col")).
		Unit("percentunit").Decimals(1).Min(0).
		ShowPoints(common.VisibilityModeAlways).
		ColorScheme(dashboard.NewFieldColorBuilder().Mode(dashboard.FieldColorModeIdPaletteClassic)))
	b.WithPanel(lineChart("Parts per hour", "Good and rejected parts of each hour, from the hourly KPI rows.", 12).
		WithTarget(InfluxQL(hourly(`"good" AS "good", "reject" AS "reject"`)).Alias("$col")).
		Unit("none").Decimals(0).Min(0).
		DrawStyle(common.GraphDrawStyleBars).FillOpacity(80).
		Stacking(common.NewStackingConfigBuilder().Mode(common.StackingModeNormal)).
		ColorScheme(fixedColor("green")).
		OverrideByName("reject", []dashboard.DynamicConfigValue{{Id: "color", Value: map[string]any{"mode": "fixed", "fixedColor": "red"}}}))

	b.WithRow(dashboard.NewRowBuilder("CNC: spindle, feed and cycle time"))
	b.WithPanel(lineChart("Spindle speed", "spindle_speed_rpm, mean per interval.", 8).
		WithTarget(InfluxQL(series(`mean("spindle_speed_rpm") AS "spindle speed"`, cncWhere)).Alias("$col")).
		Unit("rotrpm").Min(0))
	b.WithPanel(lineChart("Spindle load", "spindle_load_pct, mean and peak per interval.", 8).
		WithTarget(InfluxQL(series(`mean("spindle_load_pct") AS "mean", max("spindle_load_pct") AS "max"`, cncWhere)).Alias("$col")).
		Unit("percent").Min(0).Max(100))
	b.WithPanel(lineChart("Feed override", "feed_override_pct: the operator's feed override; below 100 % slows every cycle.", 8).
		WithTarget(InfluxQL(series(`mean("feed_override_pct") AS "feed override"`, cncWhere)).Alias("$col")).
		Unit("percent").Min(0))
	b.WithPanel(lineChart("Cycle time", "cycle_time_s: the time of the last completed part.", 12).
		WithTarget(InfluxQL(series(`mean("cycle_time_s") AS "cycle time"`, cncWhere)).Alias("$col")).
		Unit("s").Min(0))
	b.WithPanel(lineChart("Temperature", "temperature_c, mean per interval.", 12).
		WithTarget(InfluxQL(series(`mean("temperature_c") AS "temperature"`, cncWhere)).Alias("$col")).
		Unit("celsius"))

	b.WithRow(dashboard.NewRowBuilder("Robot: TCP speed, joint torques and cycles"))
	b.WithPanel(lineChart("TCP speed", "tcp_speed_mm_s: speed of the tool centre point, mean per interval.", 8).
		WithTarget(InfluxQL(series(`mean("tcp_speed_mm_s") AS "TCP speed"`, robotWhere)).Alias("$col")).
		Unit("suffix: mm/s").Min(0))
	b.WithPanel(lineChart("Joint torques", "joint_torque_nm_1 … _6, mean per interval.", 8).
		WithTarget(InfluxQL(series(`mean("joint_torque_nm_1") AS "J1", mean("joint_torque_nm_2") AS "J2", mean("joint_torque_nm_3") AS "J3", mean("joint_torque_nm_4") AS "J4", mean("joint_torque_nm_5") AS "J5", mean("joint_torque_nm_6") AS "J6"`, robotWhere)).Alias("$col")).
		Unit("suffix: Nm"))
	b.WithPanel(lineChart("Cycles per minute", "The rate of the cycle_count counter; a counter reset is not counted as negative.", 8).
		WithTarget(InfluxQL(`SELECT non_negative_derivative(last("cycle_count"), 1m) AS "cycles" FROM "machine" WHERE ` + robotWhere + ` AND $timeFilter GROUP BY time($__interval) fill(none)`).Alias("$col")).
		Unit("suffix: /min").Min(0))

	b.WithRow(dashboard.NewRowBuilder("Power and energy"))
	b.WithPanel(lineChart("Power", "power_w, mean per interval.", 8).
		WithTarget(InfluxQL(series(`mean("power_w") AS "power"`, machineWhere)).Alias("$col")).
		Unit("watt").Min(0))
	b.WithPanel(lineChart("Energy per hour", "The increase of the energy_wh meter in each hour, from the hourly KPI rows.", 8).
		WithTarget(InfluxQL(hourly(`"energy_wh" AS "energy"`)).Alias("$col")).
		Unit("watth").Min(0).
		DrawStyle(common.GraphDrawStyleBars).FillOpacity(80).
		ColorScheme(fixedColor("blue")))
	b.WithPanel(lineChart("Energy per good part, per hour", "Energy of each hour divided by its good parts.", 8).
		WithTarget(InfluxQL(hourly(`"energy_per_good_part_wh" AS "per good part"`)).Alias("$col")).
		Unit("watth").Decimals(1).Min(0).
		ShowPoints(common.VisibilityModeAlways).
		ColorScheme(fixedColor("purple")))

	return b.Build()
}
