package hub

import (
	"context"
	"fmt"
	"net/http"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api"
	"github.com/influxdata/influxdb-client-go/v2/api/write"
)

// influxWriter writes benchmark points through the v2 write API. It uses
// the client library directly because the agent's sink writes samples of
// machines, whose series key (site, line, machine) has no place for
// machine_class, kpi and period.
type influxWriter struct {
	cfg InfluxConfig
	api api.WriteAPIBlocking
}

func newInfluxWriter(cfg InfluxConfig) (*influxWriter, error) {
	opts := influxdb2.DefaultOptions().SetHTTPClient(&http.Client{Timeout: cfg.Timeout})
	c := influxdb2.NewClientWithOptions(cfg.URL, cfg.Token.Reveal(), opts)
	return &influxWriter{cfg: cfg, api: c.WriteAPIBlocking(cfg.Org, cfg.Bucket)}, nil
}

// WritePoints writes points as the benchmark measurement: tags
// machine_class, kpi and period, fields p25, p50, p75 and firms, at the
// period's start. Writing a period again overwrites it.
func (w *influxWriter) WritePoints(ctx context.Context, points []Point) error {
	ps := make([]*write.Point, 0, len(points))
	for _, p := range points {
		ps = append(ps, influxdb2.NewPoint(w.cfg.Measurement,
			map[string]string{"machine_class": p.Class, "kpi": p.KPI, "period": p.Period},
			map[string]any{"p25": p.P25, "p50": p.P50, "p75": p.P75, "firms": int64(p.Firms)},
			p.Start))
	}
	if err := w.api.WritePoint(ctx, ps...); err != nil {
		return fmt.Errorf("write %d benchmark points to %s: %w", len(ps), w.cfg.URL, err)
	}
	return nil
}
