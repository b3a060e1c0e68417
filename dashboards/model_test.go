package dashboards

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// The tests read the committed JSON, not the Go values: what Grafana loads
// is what is checked. These types are the part of Grafana's dashboard
// model the tests need.

type dashJSON struct {
	file       string
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []variableJSON `json:"list"`
	} `json:"templating"`
	Panels []panelJSON `json:"panels"`
}

type variableJSON struct {
	Type       string          `json:"type"`
	Name       string          `json:"name"`
	Query      json.RawMessage `json:"query"`
	Datasource *dsJSON         `json:"datasource"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
}

// query is the variable's query text (Grafana also allows an object).
func (v variableJSON) query() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var obj struct {
		Query string `json:"query"`
	}
	_ = json.Unmarshal(v.Query, &obj)
	return obj.Query
}

type dsJSON struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panelJSON struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Datasource *dsJSON      `json:"datasource"`
	Targets    []targetJSON `json:"targets"`
	Panels     []panelJSON  `json:"panels"` // a collapsed row's panels
}

type targetJSON struct {
	RefID        string  `json:"refId"`
	Datasource   *dsJSON `json:"datasource"`
	Query        string  `json:"query"` // InfluxQL
	RawQuery     bool    `json:"rawQuery"`
	ResultFormat string  `json:"resultFormat"`
	Expr         string  `json:"expr"` // PromQL
}

const jsonDir = "json"

// loadCommitted reads every committed dashboard.
func loadCommitted(t testing.TB) []dashJSON {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(jsonDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in %s (%v): run go generate ./dashboards/...", jsonDir, err)
	}
	sort.Strings(files)
	var out []dashJSON
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashJSON
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		d.file = f
		out = append(out, d)
	}
	return out
}

// panels flattens rows: the panels of the dashboard in order, rows
// included, with the panels of collapsed rows after their row.
func (d dashJSON) panels() []panelJSON {
	var out []panelJSON
	var walk func([]panelJSON)
	walk = func(ps []panelJSON) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// query is one panel target with where it came from.
type query struct {
	dash, panel string
	target      targetJSON
}

func (q query) String() string { return q.dash + " / " + q.panel + " / " + q.target.RefID }

// queries lists every target of datasource type dsType.
func (d dashJSON) queries(dsType string) []query {
	var out []query
	for _, p := range d.panels() {
		for _, tg := range p.Targets {
			if tg.Datasource != nil && tg.Datasource.Type == dsType {
				out = append(out, query{d.Title, p.Title, tg})
			}
		}
	}
	return out
}

// varRef finds $name, ${name} and ${name:format} uses of variables and
// Grafana's macros.
var varRef = regexp.MustCompile(`\$(?:\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|([A-Za-z0-9_]+))`)

func varRefs(s string) []string {
	var names []string
	for _, m := range varRef.FindAllStringSubmatch(s, -1) {
		names = append(names, m[1]+m[2])
	}
	return names
}

// promRefs are the metric and label names one PromQL expression uses.
type promRefs struct {
	metrics, labels []string
}

var promKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"inf": true, "nan": true, "Inf": true, "NaN": true,
	// aggregations, which may be followed by "by (...)" before their "("
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

var promGrouping = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

var labelValuesRe = regexp.MustCompile(`^\s*label_values\(\s*(?:([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*,)?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$`)

// promNames extracts the metric names and label names of a PromQL
// expression or of a Grafana label_values(metric, label) variable query.
// It is a tokenizer, not a parser: enough for checking names against
// /metrics, while promtool checks the syntax. Grafana variables
// ($instance, $__rate_interval) are skipped.
func promNames(expr string) promRefs {
	if m := labelValuesRe.FindStringSubmatch(expr); m != nil {
		r := promRefs{labels: []string{m[3]}}
		if m[1] != "" {
			r.metrics = []string{m[1]}
			r.labels = append(r.labels, matcherLabels(m[2])...)
		}
		return r
	}
	var r promRefs
	isStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	skipSpace := func(i int) int {
		for i < len(expr) && (expr[i] == ' ' || expr[i] == '\t' || expr[i] == '\n') {
			i++
		}
		return i
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(expr) && expr[j] != c {
				if expr[j] == '\\' {
					j++
				}
				j++
			}
			i = j + 1
		case c == '{':
			j := strings.IndexByte(expr[i:], '}')
			if j < 0 {
				j = len(expr) - i - 1
			}
			r.labels = append(r.labels, matcherLabels(expr[i:i+j+1])...)
			i += j + 1
		case c == '[':
			j := strings.IndexByte(expr[i:], ']')
			if j < 0 {
				j = len(expr) - i - 1
			}
			i += j + 1
		case c == '$':
			i++
			for i < len(expr) && (isPart(expr[i]) || expr[i] == '{' || expr[i] == '}') {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isPart(expr[i]) || expr[i] == '.') {
				i++
			}
		case isStart(c):
			j := i
			for j < len(expr) && isPart(expr[j]) {
				j++
			}
			word := expr[i:j]
			next := skipSpace(j)
			switch {
			case promGrouping[word]:
				if next < len(expr) && expr[next] == '(' {
					end := strings.IndexByte(expr[next:], ')')
					for _, l := range strings.Split(expr[next+1:next+end], ",") {
						if l = strings.TrimSpace(l); l != "" {
							r.labels = append(r.labels, l)
						}
					}
					j = next + end + 1
				}
			case promKeywords[word]:
			case next < len(expr) && expr[next] == '(':
				// a function or aggregation
			default:
				r.metrics = append(r.metrics, word)
			}
			i = j
		default:
			i++
		}
	}
	return r
}

var (
	matcherRe   = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)`)
	promQuoteRe = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
)

// matcherLabels lists the label names of a {...} selector.
func matcherLabels(sel string) []string {
	var out []string
	for _, m := range matcherRe.FindAllStringSubmatch(promQuoteRe.ReplaceAllString(sel, `""`), -1) {
		out = append(out, m[1])
	}
	return out
}
