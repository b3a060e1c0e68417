package dashboards

import (
	"errors"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
)

// The Foundation SDK v0.0.22 has no InfluxDB query type, so this is the
// part of Grafana's InfluxDB target model the dashboards use: raw InfluxQL
// only. Raw InfluxQL is the one form InfluxDB 1.8, 2.x (through a DBRP
// mapping) and 3.x all answer, and the form the integration test runs as
// written.

// Result formats of an InfluxQL target.
const (
	FormatTimeSeries = "time_series"
	FormatTable      = "table"
)

// InfluxQLQuery is one raw InfluxQL target of a panel, as Grafana's
// InfluxDB datasource stores it.
type InfluxQLQuery struct {
	RefID        string                `json:"refId"`
	Datasource   *common.DataSourceRef `json:"datasource,omitempty"`
	Query        string                `json:"query"`
	RawQuery     bool                  `json:"rawQuery"`
	ResultFormat string                `json:"resultFormat"`
	// Alias names the series, e.g. "$tag_machine"; empty keeps
	// Grafana's "measurement.field {tags}" names.
	Alias string `json:"alias,omitempty"`
}

var _ variants.Dataquery = InfluxQLQuery{}

// ImplementsDataqueryVariant marks InfluxQLQuery as a panel target.
func (InfluxQLQuery) ImplementsDataqueryVariant() {}

// DataqueryType is the datasource plugin id the target belongs to.
func (InfluxQLQuery) DataqueryType() string { return "influxdb" }

// Equals reports whether other is the same target.
func (q InfluxQLQuery) Equals(other variants.Dataquery) bool {
	o, ok := other.(InfluxQLQuery)
	if !ok {
		return false
	}
	sameDS := (q.Datasource == nil) == (o.Datasource == nil)
	if sameDS && q.Datasource != nil {
		sameDS = ptrEq(q.Datasource.Type, o.Datasource.Type) && ptrEq(q.Datasource.Uid, o.Datasource.Uid)
	}
	return sameDS && q.RefID == o.RefID && q.Query == o.Query && q.RawQuery == o.RawQuery &&
		q.ResultFormat == o.ResultFormat && q.Alias == o.Alias
}

func ptrEq(a, b *string) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}

// Validate refuses a target Grafana could not run.
func (q InfluxQLQuery) Validate() error {
	var errs []error
	if q.Query == "" {
		errs = append(errs, errors.New("influxql: empty query"))
	}
	if q.ResultFormat != FormatTimeSeries && q.ResultFormat != FormatTable {
		errs = append(errs, errors.New("influxql: resultFormat must be time_series or table"))
	}
	return errors.Join(errs...)
}

// InfluxQLBuilder builds an InfluxQLQuery; it plugs into the SDK's panel
// builders' WithTarget.
type InfluxQLBuilder struct {
	q InfluxQLQuery
}

var _ cog.Builder[variants.Dataquery] = (*InfluxQLBuilder)(nil)

// InfluxQL starts a raw InfluxQL target on the dashboard's InfluxDB
// datasource variable, as a time series.
func InfluxQL(query string) *InfluxQLBuilder {
	return &InfluxQLBuilder{q: InfluxQLQuery{
		Datasource:   influxDS(),
		Query:        query,
		RawQuery:     true,
		ResultFormat: FormatTimeSeries,
	}}
}

// OnCluster runs the target on the cluster's InfluxDB (the "${cluster}"
// datasource variable) instead of the firm's own.
func (b *InfluxQLBuilder) OnCluster() *InfluxQLBuilder { b.q.Datasource = clusterDS(); return b }

// RefID sets the target's reference letter; panels with one target may
// leave it, Grafana's default is "A".
func (b *InfluxQLBuilder) RefID(id string) *InfluxQLBuilder { b.q.RefID = id; return b }

// Alias sets how series are named, e.g. "$tag_machine".
func (b *InfluxQLBuilder) Alias(alias string) *InfluxQLBuilder { b.q.Alias = alias; return b }

// Table asks for the table result format: one row per series and time,
// with the GROUP BY tags as columns.
func (b *InfluxQLBuilder) Table() *InfluxQLBuilder { b.q.ResultFormat = FormatTable; return b }

// Build returns the target.
func (b *InfluxQLBuilder) Build() (variants.Dataquery, error) {
	q := b.q
	if q.RefID == "" {
		q.RefID = "A"
	}
	if err := q.Validate(); err != nil {
		// The SDK's panel builders assert cog.BuildErrors.
		return nil, cog.MakeBuildErrors("influxql", err)
	}
	return q, nil
}
