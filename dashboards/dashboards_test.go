package dashboards

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestGeneratedJSONIsCommitted regenerates every dashboard from the Go
// code and wants the committed JSON byte for byte, and no JSON file that
// the code no longer makes (Grafana would still provision it).
func TestGeneratedJSONIsCommitted(t *testing.T) {
	want := map[string]bool{}
	for _, g := range All() {
		want[g.File] = true
		got, err := Render(g.Build)
		if err != nil {
			t.Fatalf("%s: %v", g.File, err)
		}
		committed, err := os.ReadFile(filepath.Join(jsonDir, g.File))
		if err != nil {
			t.Errorf("%s: %v; run go generate ./dashboards/...", g.File, err)
			continue
		}
		if !bytes.Equal(got, committed) {
			t.Errorf("%s differs from the Go code (%s); run go generate ./dashboards/... and commit the JSON", g.File, firstDiff(got, committed))
		}
	}
	files, _ := filepath.Glob(filepath.Join(jsonDir, "*.json"))
	for _, f := range files {
		if !want[filepath.Base(f)] {
			t.Errorf("%s is not made by the Go code; run go generate ./dashboards/... (it deletes stale files)", f)
		}
	}
}

func firstDiff(got, committed []byte) string {
	g, c := strings.Split(string(got), "\n"), strings.Split(string(committed), "\n")
	for i := 0; i < len(g) || i < len(c); i++ {
		var gl, cl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(c) {
			cl = c[i]
		}
		if gl != cl {
			return "line " + strconv.Itoa(i+1) + ": generated " + strings.TrimSpace(gl) + ", committed " + strings.TrimSpace(cl)
		}
	}
	return "no line differs"
}

// TestRenderIsDeterministic guards the golden test: map order must not
// leak into the JSON.
func TestRenderIsDeterministic(t *testing.T) {
	for _, g := range All() {
		a, err := Render(g.Build)
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			b, _ := Render(g.Build)
			if !bytes.Equal(a, b) {
				t.Fatalf("%s renders differently from one run to the next", g.File)
			}
		}
	}
}

// Grafana's macros the InfluxQL and PromQL here use.
var macros = map[string]bool{
	"timeFilter": true, "__interval": true, "__interval_ms": true, "__rate_interval": true,
	"__range": true, "col": true, "tag_machine": true, "tag_line": true, "__all": true,
}

// TestDashboardsAreConsistent checks what Grafana would only show at run
// time: unique uids and titles, targets on the dashboard's own datasource
// variable, known variables, bounded InfluxQL time ranges, panels inside
// the 24-column grid.
func TestDashboardsAreConsistent(t *testing.T) {
	uids := map[string]string{}
	for _, d := range loadCommitted(t) {
		if other, dup := uids[d.UID]; dup || d.UID == "" {
			t.Errorf("%s: uid %q empty or also in %s", d.file, d.UID, other)
		}
		uids[d.UID] = d.file

		vars := map[string]variableJSON{}
		var dsType string
		onDSVar := func(ds *dsJSON) bool { // a datasource variable of the dashboard's type
			if ds == nil || ds.Type != dsType || !strings.HasPrefix(ds.UID, "${") {
				return false
			}
			v, ok := vars[strings.TrimSuffix(strings.TrimPrefix(ds.UID, "${"), "}")]
			return ok && v.Type == "datasource" && v.query() == dsType
		}
		for _, v := range d.Templating.List {
			vars[v.Name] = v
			if v.Type == "datasource" && v.Name == "datasource" {
				dsType = v.query()
			}
		}
		if dsType == "" {
			t.Errorf("%s: no datasource variable", d.file)
		}
		checkRefs := func(where, s string) {
			for _, name := range varRefs(s) {
				if _, ok := vars[name]; !ok && !macros[name] {
					t.Errorf("%s: %s uses $%s, which is neither a variable nor a macro", d.file, where, name)
				}
			}
		}
		for _, v := range d.Templating.List {
			if v.Type == "query" {
				if !onDSVar(v.Datasource) {
					t.Errorf("%s: variable %s is not on the datasource variable: %+v", d.file, v.Name, v.Datasource)
				}
				checkRefs("variable "+v.Name, v.query())
			}
		}

		titles := map[string]bool{}
		for _, p := range d.panels() {
			if p.GridPos.W == 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("%s: panel %q outside the grid: %+v", d.file, p.Title, p.GridPos)
			}
			if p.Type == "row" {
				continue
			}
			if titles[p.Title] {
				t.Errorf("%s: two panels titled %q", d.file, p.Title)
			}
			titles[p.Title] = true
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", d.file, p.Title)
			}
			refIDs := map[string]bool{}
			for _, tg := range p.Targets {
				if refIDs[tg.RefID] {
					t.Errorf("%s: panel %q has two targets %s", d.file, p.Title, tg.RefID)
				}
				refIDs[tg.RefID] = true
				if !onDSVar(tg.Datasource) {
					t.Errorf("%s: panel %q target %s is not on the datasource variable: %+v", d.file, p.Title, tg.RefID, tg.Datasource)
				}
				q := tg.Query + tg.Expr
				if strings.TrimSpace(q) == "" {
					t.Errorf("%s: panel %q target %s is empty", d.file, p.Title, tg.RefID)
				}
				checkRefs("panel "+p.Title, q)
				if dsType == "influxdb" {
					checkInfluxQL(t, d.file+": "+p.Title, tg)
				}
			}
		}
	}
}

var timeBound = regexp.MustCompile(`\$timeFilter|time > now\(\) - \d+[smhdw]`)

// checkInfluxQL wants raw queries with a time bound: a query without one
// reads every point the database has, which on a shop floor is years.
func checkInfluxQL(t *testing.T, where string, tg targetJSON) {
	t.Helper()
	if !tg.RawQuery {
		t.Errorf("%s: not a raw InfluxQL query", where)
	}
	if !timeBound.MatchString(tg.Query) {
		t.Errorf("%s: query has no time bound: %s", where, tg.Query)
	}
	if strings.Contains(tg.Query, "GROUP BY time(") && !strings.Contains(tg.Query, "$timeFilter") {
		t.Errorf("%s: GROUP BY time needs $timeFilter: %s", where, tg.Query)
	}
	for _, name := range []string{"site", "line", "machine"} {
		if strings.Contains(tg.Query, "$"+name) && !strings.Contains(tg.Query, `"`+name+`" =~ /^$`+name+`$/`) {
			t.Errorf("%s: $%s must be used as \"%s\" =~ /^$%s$/, the form Grafana escapes multi-values for: %s", where, name, name, name, tg.Query)
		}
	}
}

// TestEveryHealthQueryIsPromQL makes sure the health dashboard's metric
// names are all found by promNames, which the integration test relies on.
func TestEveryHealthQueryIsPromQL(t *testing.T) {
	for _, d := range loadCommitted(t) {
		for _, q := range d.queries("prometheus") {
			if len(promNames(q.target.Expr).metrics) == 0 {
				t.Errorf("%s: no metric name found in %s", q, q.target.Expr)
			}
		}
	}
}

func TestPromNames(t *testing.T) {
	tests := []struct {
		expr            string
		metrics, labels []string
	}{
		{`up`, []string{"up"}, nil},
		{`sum by (instance, source) (rate(shopfloor_source_samples_total{instance=~"$instance"}[$__rate_interval]))`,
			[]string{"shopfloor_source_samples_total"}, []string{"instance", "source", "instance"}},
		{`histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y=z"}[5m]))) > 0.5 or vector(0)`,
			[]string{"a_bucket"}, []string{"le", "x"}},
		{`increase(a_total[1h]) + on (sink) group_left (kind) b_total offset 5m`,
			[]string{"a_total", "b_total"}, []string{"sink", "kind"}},
		{`sum without(source)(x) / ignoring(reason) y`, []string{"x", "y"}, []string{"source", "reason"}},
		{`count(shopfloor_build_info{instance=~"$instance"}) * 1e3`, []string{"shopfloor_build_info"}, []string{"instance"}},
		{`label_values(shopfloor_build_info, instance)`, []string{"shopfloor_build_info"}, []string{"instance"}},
		{`label_values(shopfloor_source_connected{source="a"}, source)`, []string{"shopfloor_source_connected"}, []string{"source", "source"}},
		{`label_values(instance)`, nil, []string{"instance"}},
	}
	for _, tt := range tests {
		got := promNames(tt.expr)
		if !reflect.DeepEqual(got.metrics, tt.metrics) || !reflect.DeepEqual(got.labels, tt.labels) {
			t.Errorf("promNames(%q) = %v %v, want %v %v", tt.expr, got.metrics, got.labels, tt.metrics, tt.labels)
		}
	}
}
