// Package dashboards holds shopfloor's Grafana dashboards as Go code, built
// with the Grafana Foundation SDK. The JSON Grafana loads is generated from
// it into json/ and committed, so Grafana provisioning needs no Go; a test
// keeps the two identical.
//
// Regenerate the JSON after changing the code:
//
//	go generate ./dashboards/...
//
// The InfluxDB panels use raw InfluxQL against the schema of the agent's
// InfluxDB sink (measurements "machine" and "kpi", tags site, area, line,
// machine, machine_type and, for kpi, window), because InfluxQL is the one
// language InfluxDB 1.8, 2.x (through a DBRP mapping) and 3.x all answer.
// The agent health dashboard uses PromQL over the agent's /metrics.
package dashboards

//go:generate go run ./gen -out json

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// Datasource uids of the provisioning files in provisioning/datasources.
// Each dashboard also has a datasource variable, so a firm that imports
// the JSON into a Grafana it already runs picks its own datasource.
const (
	InfluxDatasourceUID     = "shopfloor-influxdb"
	PrometheusDatasourceUID = "shopfloor-prometheus"
	// ClusterDatasourceUID is the cluster's InfluxDB, which the hub writes
	// the benchmark measurement to; only the cluster dashboard uses it.
	ClusterDatasourceUID = "shopfloor-cluster"
)

// Dashboard uids; links between the dashboards use them.
const (
	OverviewUID = "shopfloor-overview"
	MachineUID  = "shopfloor-machine"
	AgentUID    = "shopfloor-agent"
	ClusterUID  = "shopfloor-cluster"
)

// Generated is one dashboard and the file its JSON goes to, relative to
// the json folder.
type Generated struct {
	File  string
	Build func() (dashboard.Dashboard, error)
}

// All lists every dashboard, in the order they are generated.
func All() []Generated {
	return []Generated{
		{"shopfloor-overview.json", Overview},
		{"shopfloor-machine.json", MachineDetail},
		{"shopfloor-agent.json", AgentHealth},
		{"shopfloor-cluster.json", ClusterBenchmark},
	}
}

// Render builds a dashboard and returns the JSON that is committed: two
// spaces of indentation and a final newline, so the files diff well.
func Render(build func() (dashboard.Dashboard, error)) ([]byte, error) {
	d, err := build()
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", deref(d.Title), err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, unescapeHTML(raw), "", "  "); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// unescapeHTML undoes encoding/json's \u003c, \u003e and \u0026, which the
// SDK's own MarshalJSON methods produce whatever the encoder is told:
// queries with "time > now() - 25h" stay readable in review. An escape is
// only one when the backslash before it is not itself escaped.
func unescapeHTML(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] == '\\' && i+1 < len(b) {
			if b[i+1] == 'u' && i+6 <= len(b) {
				switch string(b[i+2 : i+6]) {
				case "003c":
					out = append(out, '<')
					i += 5
					continue
				case "003e":
					out = append(out, '>')
					i += 5
					continue
				case "0026":
					out = append(out, '&')
					i += 5
					continue
				}
			}
			out = append(out, b[i], b[i+1]) // any other escape, kept whole
			i++
			continue
		}
		out = append(out, b[i])
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func ptr[T any](v T) *T { return &v }

// The datasource variables: panels refer to "${datasource}" rather than a
// fixed uid. The cluster dashboard has a second one, "${cluster}", for the
// cluster's InfluxDB.
const (
	dsVar        = "datasource"
	clusterDSVar = "cluster"
)

func influxDS() *common.DataSourceRef {
	return &common.DataSourceRef{Type: ptr("influxdb"), Uid: ptr("${" + dsVar + "}")}
}

func clusterDS() *common.DataSourceRef {
	return &common.DataSourceRef{Type: ptr("influxdb"), Uid: ptr("${" + clusterDSVar + "}")}
}

// mixedDS lets a panel's targets each name their own datasource.
func mixedDS() common.DataSourceRef {
	return common.DataSourceRef{Type: ptr("datasource"), Uid: ptr("-- Mixed --")}
}

func promDS() *common.DataSourceRef {
	return &common.DataSourceRef{Type: ptr("prometheus"), Uid: ptr("${" + dsVar + "}")}
}

// datasourceVariable lets the user pick a datasource of pluginType;
// provisioned Grafana starts on the uid the provisioning file gives.
func datasourceVariable(pluginType, label, defaultUID string) *dashboard.DatasourceVariableBuilder {
	return namedDatasourceVariable(dsVar, pluginType, label, defaultUID)
}

func namedDatasourceVariable(name, pluginType, label, defaultUID string) *dashboard.DatasourceVariableBuilder {
	return dashboard.NewDatasourceVariableBuilder(name).
		Label(label).
		Type(pluginType).
		Current(dashboard.VariableOption{
			Text:  dashboard.StringOrArrayOfString{String: ptr(defaultUID)},
			Value: dashboard.StringOrArrayOfString{String: ptr(defaultUID)},
		})
}

// tagValues is a template variable listing the values of one tag of the
// machine measurement, narrowed by where (InfluxQL tag predicates, may be
// empty). The kpi measurement has the same tags but also line and site
// roll-up rows without a machine, so the machine measurement is the list
// of what really exists.
func tagValues(name, label, key, where string) *dashboard.QueryVariableBuilder {
	q := fmt.Sprintf(`SHOW TAG VALUES FROM "machine" WITH KEY = %q`, key)
	if where != "" {
		q += " WHERE " + where
	}
	return dashboard.NewQueryVariableBuilder(name).
		Label(label).
		Datasource(*influxDS()).
		Query(dashboard.StringOrMap{String: ptr(q)}).
		Definition(q).
		Refresh(dashboard.VariableRefreshOnDashboardLoad).
		Sort(dashboard.VariableSortNaturalAsc)
}

// allSelected is a multi-value variable's start: All.
func allSelected() dashboard.VariableOption {
	return dashboard.VariableOption{
		Text:  dashboard.StringOrArrayOfString{String: ptr("All")},
		Value: dashboard.StringOrArrayOfString{String: ptr("$__all")},
	}
}

// allLines is the All value of the line variables: every line, and also
// machines without a line tag, which InfluxQL compares as "".
const allLines = ".*"

// stateColors are the colours of the machine states wherever they are
// shown: green runs, red is in alarm, grey is unknown.
var stateColors = []struct{ state, color string }{
	{"running", "green"},
	{"idle", "yellow"},
	{"stopped", "orange"},
	{"setup", "blue"},
	{"alarm", "red"},
	{"maintenance", "purple"},
	{"offline", "#8e8e8e"},
}

func stateMappings() []dashboard.ValueMapping {
	opts := make(map[string]dashboard.ValueMappingResult, len(stateColors))
	for i, s := range stateColors {
		opts[s.state] = dashboard.ValueMappingResult{Text: ptr(s.state), Color: ptr(s.color), Index: ptr(int32(i))}
	}
	return []dashboard.ValueMapping{{ValueMap: &dashboard.ValueMap{Type: dashboard.MappingTypeValueToText, Options: opts}}}
}

// thresholds builds absolute thresholds: base colour first, then
// (value, colour) steps.
func thresholds(base string, steps ...any) cog.Builder[dashboard.ThresholdsConfig] {
	ts := []dashboard.Threshold{{Value: nil, Color: base}}
	for i := 0; i+1 < len(steps); i += 2 {
		ts = append(ts, dashboard.Threshold{Value: ptr(toFloat(steps[i])), Color: steps[i+1].(string)})
	}
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps(ts)
}

func toFloat(v any) float64 {
	switch n := v.(type) {
	case int:
		return float64(n)
	case float64:
		return n
	}
	panic(fmt.Sprintf("threshold value %v is not a number", v))
}

// oeeThresholds colour a 0..1 ratio: below 60 % red, below 85 % (the
// usual world-class OEE mark) yellow, above green.
func oeeThresholds() cog.Builder[dashboard.ThresholdsConfig] {
	return thresholds("red", 0.6, "yellow", 0.85, "green")
}

func fixedColor(c string) cog.Builder[dashboard.FieldColor] {
	return dashboard.NewFieldColorBuilder().Mode(dashboard.FieldColorModeIdFixed).FixedColor(c)
}

func thresholdColor() cog.Builder[dashboard.FieldColor] {
	return dashboard.NewFieldColorBuilder().Mode(dashboard.FieldColorModeIdThresholds)
}

func lastValue() cog.Builder[common.ReduceDataOptions] {
	return common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}).Values(false)
}

func legendTable(calcs ...string) cog.Builder[common.VizLegendOptions] {
	return common.NewVizLegendOptionsBuilder().
		DisplayMode(common.LegendDisplayModeTable).
		Placement(common.LegendPlacementBottom).
		ShowLegend(true).
		Calcs(calcs)
}

func tooltipMulti() cog.Builder[common.VizTooltipOptions] {
	return common.NewVizTooltipOptionsBuilder().Mode(common.TooltipDisplayModeMulti).Sort(common.SortOrderDescending)
}

func tableFooter() cog.Builder[common.TableFooterOptions] {
	return common.NewTableFooterOptionsBuilder().Show(false).Reducer([]string{}).CountRows(false)
}

func legendList() cog.Builder[common.VizLegendOptions] {
	return common.NewVizLegendOptionsBuilder().
		DisplayMode(common.LegendDisplayModeList).
		Placement(common.LegendPlacementBottom).
		ShowLegend(true)
}

// link is a dashboard link to the other shopfloor dashboards, keeping
// the time range and variables.
func links() []cog.Builder[dashboard.DashboardLink] {
	return []cog.Builder[dashboard.DashboardLink]{
		dashboard.NewDashboardLinkBuilder("shopfloor").
			Type(dashboard.DashboardLinkTypeDashboards).
			Tags([]string{"shopfloor"}).
			AsDropdown(false).
			IncludeVars(true).
			KeepTime(true),
	}
}
