//go:build integration

package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// clusterDashboardTarget is one InfluxQL target of the committed Cluster
// benchmark dashboard, as Grafana reads it.
type clusterDashboardTarget struct {
	panel, refID, query, datasource string
}

func loadClusterDashboard(t *testing.T) (classQuery string, targets []clusterDashboardTarget) {
	t.Helper()
	raw, err := os.ReadFile("../../dashboards/json/shopfloor-cluster.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				RefID      string `json:"refId"`
				Query      string `json:"query"`
				Datasource struct {
					UID string `json:"uid"`
				} `json:"datasource"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	for _, v := range d.Templating.List {
		if v.Name == "class" {
			classQuery, _ = v.Query.(string)
		}
	}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			targets = append(targets, clusterDashboardTarget{p.Title, tg.RefID, tg.Query, tg.Datasource.UID})
		}
	}
	if classQuery == "" || len(targets) < 8 {
		t.Fatalf("cluster dashboard: class query %q, %d targets", classQuery, len(targets))
	}
	return classQuery, targets
}

// checkClusterDashboard runs every query of the Cluster benchmark
// dashboard as Grafana would for one firm: the firm's own targets on its
// database, the cluster's on the hub's. Every class the firm shares has
// its own figures; the cluster's exist exactly for the published classes;
// the firm's OEE line is the OEE it shared.
func checkClusterDashboard(t *testing.T, influxURL, firmDB string, start time.Time, published map[string]bool, ownOEE map[string]float64) {
	classQuery, targets := loadClusterDashboard(t)
	var classes []string
	collectortest.Eventually(t, 30*time.Second, func() error {
		series, err := collectortest.QueryErr(influxURL, firmDB, classQuery)
		if err != nil {
			return err
		}
		classes = classes[:0]
		for _, s := range series {
			for _, row := range s.Values {
				classes = append(classes, row[1].(string))
			}
		}
		slices.Sort(classes)
		if want := []string{"cnc-5axis", "cnc-lathe", "robot-welding"}; !slices.Equal(classes, want) {
			return fmt.Errorf("class variable = %v, want %v", classes, want)
		}
		return nil
	})
	timeFilter := fmt.Sprintf("time >= '%s' AND time < '%s'", start.Add(-time.Hour).Format(time.RFC3339), start.Add(2*time.Hour).Format(time.RFC3339))
	quoted := make([]string, len(classes))
	for i, c := range classes {
		quoted[i] = regexp.QuoteMeta(c)
	}
	choices := append(append([]string(nil), classes...), "All")
	for _, class := range choices {
		value := regexp.QuoteMeta(class)
		if class == "All" {
			value = "(" + strings.Join(quoted, "|") + ")"
		}
		for _, tg := range targets {
			q := strings.NewReplacer("$class", value, "$timeFilter", timeFilter, "$__interval", "1h").Replace(tg.query)
			if unfilled.MatchString(q) {
				t.Fatalf("%s/%s: unfilled variable in %s", tg.panel, tg.refID, q)
			}
			db, wantData := firmDB, true
			switch tg.datasource {
			case "${datasource}":
			case "${cluster}":
				db, wantData = "cluster", class == "All" || published[class]
			default:
				t.Fatalf("%s/%s: datasource %q", tg.panel, tg.refID, tg.datasource)
			}
			series, err := collectortest.QueryErr(influxURL, db, q)
			if err != nil {
				t.Fatalf("%s/%s with class=%s: %v\n%s", tg.panel, tg.refID, class, err, q)
			}
			if got := seriesHaveData(series); got != wantData {
				t.Errorf("%s/%s with class=%s on %s: data %v, want %v\n%s", tg.panel, tg.refID, class, db, got, wantData, q)
			}
			if tg.panel == "OEE, you and the cluster" && tg.datasource == "${datasource}" && class != "All" {
				v := firstNumber(series, "you: OEE")
				if math.Abs(v-ownOEE[class]) > 1e-9 {
					t.Errorf("the dashboard shows your %s OEE as %v, you shared %v", class, v, ownOEE[class])
				}
			}
		}
	}
}

var unfilled = regexp.MustCompile(`\$[A-Za-z_{]`)

func seriesHaveData(series []collectortest.Series) bool {
	for _, s := range series {
		for i, c := range s.Columns {
			if c == "time" {
				continue
			}
			for _, row := range s.Values {
				if row[i] != nil {
					return true
				}
			}
		}
	}
	return false
}

func firstNumber(series []collectortest.Series, column string) float64 {
	for _, s := range series {
		for i, c := range s.Columns {
			if c != column {
				continue
			}
			for _, row := range s.Values {
				if n, ok := row[i].(json.Number); ok {
					f, _ := n.Float64()
					return f
				}
			}
		}
	}
	return math.NaN()
}
