//go:build integration

package dashboards

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// shopfloorBin is the real binary, built once: the dashboards are checked
// against what the program a firm runs writes and exports.
var shopfloorBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shopfloor-dashboards-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if shopfloorBin, err = collectortest.BuildBinary("../cmd/shopfloor", dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// The demo's database, and the time range every $timeFilter becomes: the
// simulator starts at the wall clock and runs 120 times faster, so its
// data lies mostly in the future.
const (
	demoDB         = "shopfloor"
	testTimeFilter = "time > now() - 1h AND time < now() + 1d"
	testInterval   = "1m"
)

// TestDashboardsAgainstRealAgent runs `shopfloor demo` (simulated CNCs and
// robots over MQTT into the real agent and InfluxDB 1.8) and checks every
// InfluxQL query of every dashboard against what it writes, and every
// PromQL query of the health dashboard against a real agent's /metrics.
func TestDashboardsAgainstRealAgent(t *testing.T) {
	influxd := os.Getenv(collectortest.EnvInfluxd)
	if influxd == "" {
		t.Fatalf("%s is not set: run through deploy/scripts/testenv.sh (make test)", collectortest.EnvInfluxd)
	}
	influxURL := startDemo(t, influxd)
	t.Run("InfluxQL", func(t *testing.T) {
		t.Parallel()
		testInfluxQLPanels(t, influxURL)
	})
	t.Run("PromQL", func(t *testing.T) {
		t.Parallel()
		testPromQLMetrics(t, influxURL)
	})
}

// startDemo runs the demo until the test ends and returns its InfluxDB.
func startDemo(t *testing.T, influxd string) string {
	dir := t.TempDir()
	cmd := exec.Command(shopfloorBin, "demo", "--influxd", influxd, "--dir", dir,
		"--mqtt", "127.0.0.1:0", "--http", fmt.Sprintf("127.0.0.1:%d", collectortest.FreePort(t)),
		"--time-factor", "120", "--progress", "1h")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "demo.log"))
			t.Logf("demo.log (last 4 KiB):\n%s", tail(b, 4096))
		}
	})
	urls := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`InfluxDB\s+(http://\S+)`)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				urls <- m[1]
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case u := <-urls:
		return u
	case <-done:
		t.Fatal("the demo exited before saying where InfluxDB is")
	case <-time.After(60 * time.Second):
		t.Fatal("the demo did not start within 60 s")
	}
	return ""
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// assignment is one way to fill a dashboard's template variables, as a
// user picking values would.
type assignment struct {
	subst       map[string]string // variable name -> text put in its place
	desc        []string
	machineType string // of the chosen machine, when there is a machine variable
}

func (a assignment) String() string { return strings.Join(a.desc, " ") }

// assignments runs the dashboard's variable queries in order, each with
// the variables before it filled in as Grafana does, and returns every
// combination of their values, with "All" where a variable offers it.
func assignments(influxURL string, d dashJSON) ([]assignment, error) {
	var vars []variableJSON
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			vars = append(vars, v)
		}
	}
	var out []assignment
	var walk func(i int, cur assignment) error
	walk = func(i int, cur assignment) error {
		if i == len(vars) {
			if m, ok := cur.subst["machine"]; ok {
				series, err := collectortest.QueryErr(influxURL, demoDB,
					`SHOW TAG VALUES FROM "machine" WITH KEY = "machine_type" WHERE "machine" =~ /^`+m+`$/`)
				if err != nil {
					return err
				}
				if vals := column(series, "value"); len(vals) == 1 {
					cur.machineType = vals[0]
				}
			}
			out = append(out, cur)
			return nil
		}
		v := vars[i]
		q, err := substitute(v.query(), cur.subst)
		if err != nil {
			return fmt.Errorf("variable %s: %w", v.Name, err)
		}
		series, err := collectortest.QueryErr(influxURL, demoDB, q)
		if err != nil {
			return fmt.Errorf("variable %s: %s: %w", v.Name, q, err)
		}
		values := column(series, "value")
		if len(values) == 0 {
			return fmt.Errorf("variable %s has no values yet: %s", v.Name, q)
		}
		type option struct{ text, desc string }
		var opts []option
		quoted := make([]string, len(values))
		for j, val := range values {
			quoted[j] = regexp.QuoteMeta(val)
			opts = append(opts, option{quoted[j], val})
		}
		if v.IncludeAll {
			all := v.AllValue
			if all == "" {
				all = "(" + strings.Join(quoted, "|") + ")"
			}
			opts = append(opts, option{all, "All"})
		}
		for _, o := range opts {
			next := assignment{subst: map[string]string{}, desc: append(append([]string(nil), cur.desc...), v.Name+"="+o.desc)}
			for k, val := range cur.subst {
				next.subst[k] = val
			}
			next.subst[v.Name] = o.text
			if err := walk(i+1, next); err != nil {
				return err
			}
		}
		return nil
	}
	err := walk(0, assignment{subst: map[string]string{}})
	return out, err
}

func column(series []collectortest.Series, name string) []string {
	var out []string
	for _, s := range series {
		for i, c := range s.Columns {
			if c != name {
				continue
			}
			for _, row := range s.Values {
				if v, ok := row[i].(string); ok {
					out = append(out, v)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// substitute does what Grafana does to a query before sending it:
// variables and macros become concrete InfluxQL.
func substitute(q string, subst map[string]string) (string, error) {
	var err error
	out := varRef.ReplaceAllStringFunc(q, func(ref string) string {
		m := varRef.FindStringSubmatch(ref)
		name := m[1] + m[2]
		switch name {
		case "timeFilter":
			return testTimeFilter
		case "__interval":
			return testInterval
		case "__interval_ms":
			d, _ := time.ParseDuration(testInterval)
			return strconv.FormatInt(d.Milliseconds(), 10)
		}
		v, ok := subst[name]
		if !ok {
			err = fmt.Errorf("$%s is not filled in", name)
		}
		return v
	})
	return out, err
}

var machineTypeTerm = regexp.MustCompile(`"machine_type" = '([^']+)'`)

// hasData reports whether an answer holds a value in a column other than
// time, and other than the "shift" name that currentShift selects only
// to find the newest row.
func hasData(series []collectortest.Series) bool {
	for _, s := range series {
		for i, c := range s.Columns {
			if c == "time" || c == "shift" {
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

// testInfluxQLPanels runs every InfluxQL panel query of every dashboard
// with every assignment of its variables and wants data for each, except
// that a query for one machine type (a "machine_type" = 'robot' term) is
// only required to have data when the chosen machine is of that type. The
// simulated plant fills up over time (a shift's first part, the first
// finished hour), so the check repeats until every pair has had data once.
func testInfluxQLPanels(t *testing.T, influxURL string) {
	dashes := loadCommitted(t)
	satisfied := map[string]bool{}
	var missing []string
	checked := 0
	deadline := time.Now().Add(80 * time.Second)
	for {
		missing = missing[:0]
		checked = 0
		for _, d := range dashes {
			qs := d.queries("influxdb")
			if len(qs) == 0 || d.UID == ClusterUID {
				// The cluster dashboard needs a hub's benchmark, which
				// the demo has not: cmd/shopfloor's
				// TestClusterBenchmarkEightFirms runs its queries.
				continue
			}
			as, err := assignments(influxURL, d)
			if err != nil {
				missing = append(missing, d.Title+": "+err.Error())
				continue
			}
			for _, q := range qs {
				required := 0
				for _, a := range as {
					key := q.String() + " with " + a.String()
					want := machineTypeTerm.FindStringSubmatch(q.target.Query)
					if want != nil && a.machineType != "" && a.machineType != want[1] {
						continue
					}
					required++
					checked++
					if satisfied[key] {
						continue
					}
					text, err := substitute(q.target.Query, a.subst)
					if err != nil {
						t.Fatalf("%s: %v", key, err)
					}
					series, err := collectortest.QueryErr(influxURL, demoDB, text)
					if err != nil {
						// A query InfluxDB refuses does not get better by waiting.
						t.Fatalf("%s:\n%s\n%v", key, text, err)
					}
					if hasData(series) {
						satisfied[key] = true
					} else {
						missing = append(missing, key+":\n    "+text)
					}
				}
				if required == 0 {
					t.Errorf("%s: no assignment of the variables needs data from it (%d assignments)", q, len(as))
				}
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d panel queries (with their variables filled in) found no data within 80 s:\n  %s",
				len(missing), checked, strings.Join(missing, "\n  "))
		}
		time.Sleep(time.Second)
	}
	t.Logf("%d panel queries with their variables filled in all found data", checked)
}

// testPromQLMetrics checks the health dashboard's PromQL: promtool parses
// every expression, and every metric and label it names is in the
// /metrics of a real agent that has seen traffic, a bad input and a
// broker restart (so the lazily created series exist too).
func testPromQLMetrics(t *testing.T, influxURL string) {
	promtool := os.Getenv("SHOPFLOOR_PROMTOOL")
	if promtool == "" {
		t.Fatal("SHOPFLOOR_PROMTOOL is not set: run through deploy/scripts/testenv.sh (make test)")
	}
	var exprs []query
	for _, d := range loadCommitted(t) {
		exprs = append(exprs, d.queries("prometheus")...)
		for _, v := range d.Templating.List {
			if v.Type == "query" && v.Datasource != nil && v.Datasource.Type == "prometheus" {
				exprs = append(exprs, query{d.Title, "variable " + v.Name, targetJSON{RefID: v.Name, Expr: v.query()}})
			}
		}
	}
	if len(exprs) == 0 {
		t.Fatal("no PromQL in any dashboard")
	}
	checkPromQLSyntax(t, promtool, exprs)

	// A real agent with the compose example config, on its own broker
	// and its own database in the demo's InfluxDB.
	mosq := collectortest.Mosquitto(t)
	collectortest.CreateDatabase(t, influxURL, "agenthealth")
	dir := t.TempDir()
	httpAddr := fmt.Sprintf("127.0.0.1:%d", collectortest.FreePort(t))
	cmd := exec.Command(shopfloorBin, "agent", "--config", "../deploy/examples/compose.yaml")
	cmd.Env = append(os.Environ(),
		"MQTT_URL="+mosq.URL(), "MQTT_CLIENT_ID=dashboards-test",
		"INFLUX_URL="+influxURL, "INFLUX_BUCKET=agenthealth", "INFLUX_TOKEN=",
		"SHOPFLOOR_HTTP="+httpAddr, "SHOPFLOOR_DATA_DIR="+filepath.Join(dir, "data"))
	logPath := filepath.Join(dir, "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("agent log:\n%s", tail(b, 4096))
		}
	})
	base := "http://" + httpAddr
	collectortest.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	})

	pub := collectortest.Publisher(t, mosq.URL())
	now := time.Now().UnixMilli()
	var msgs []collectortest.Message
	for i := range 5 {
		msgs = append(msgs, collectortest.Message{Topic: "factory/line-1/cnc-01/telemetry", Payload: fmt.Sprintf(
			`{"ts":%d,"machine_type":"cnc","state":"running","program":"O1001","part_count":%d,"reject_count":0,"spindle_speed":12000,"power_w":7000,"energy_wh":%d}`,
			now+int64(i)*1000, 10+i, 100+i)})
	}
	msgs = append(msgs, collectortest.Message{Topic: "factory/line-1/cnc-01/telemetry", Payload: `{"ts": oops`})
	collectortest.Publish(t, pub, msgs...)
	// The broker goes away and comes back: the source's supervisor counts
	// a restart.
	mosq.Restart()
	// Series of labelled metrics appear with their first event (a write,
	// a bad input, a restart), so the scrape waits for all of them.
	var names []string
	for _, q := range exprs {
		names = append(names, promNames(q.target.Expr).metrics...)
	}
	metrics := waitMetrics(t, base, names...)

	for _, q := range exprs {
		refs := promNames(q.target.Expr)
		labels := map[string]bool{"instance": true, "job": true} // added by Prometheus at scrape time
		for _, m := range refs.metrics {
			ls, ok := metrics[m]
			if !ok {
				t.Errorf("%s: metric %s is not exported by the agent\n    %s", q, m, q.target.Expr)
			}
			for l := range ls {
				labels[l] = true
			}
		}
		for _, l := range refs.labels {
			if !labels[l] {
				t.Errorf("%s: label %s is on none of the metrics %v\n    %s", q, l, refs.metrics, q.target.Expr)
			}
		}
	}
	t.Logf("%d PromQL expressions name only metrics and labels the agent exports", len(exprs))
}

// waitMetrics scrapes /metrics until every name in want has a sample and
// returns every sample name with its label names.
func waitMetrics(t *testing.T, base string, want ...string) map[string]map[string]bool {
	t.Helper()
	var got map[string]map[string]bool
	collectortest.Eventually(t, 20*time.Second, func() error {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		got = parseExposition(resp.Body)
		var missing []string
		for _, w := range want {
			if _, ok := got[w]; !ok {
				missing = append(missing, w)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("the agent's /metrics has no %s", strings.Join(missing, ", "))
		}
		return nil
	})
	return got
}

var sampleRe = regexp.MustCompile(`^([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s`)

// parseExposition reads the text format: sample names (histograms give
// _bucket, _sum and _count) and the label names seen on each.
func parseExposition(r io.Reader) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if out[m[1]] == nil {
			out[m[1]] = map[string]bool{}
		}
		for _, l := range matcherLabels("{" + m[3] + "}") {
			out[m[1]][l] = true
		}
	}
	return out
}

// checkPromQLSyntax has promtool parse every expression, as recording
// rules, with Grafana's variables filled in as Grafana would.
func checkPromQLSyntax(t *testing.T, promtool string, exprs []query) {
	t.Helper()
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for i, q := range exprs {
		if labelValuesRe.MatchString(q.target.Expr) {
			continue // Grafana's own function, not PromQL
		}
		expr := strings.NewReplacer(`$instance`, `.*`, `$__rate_interval`, `1m`, `$__interval`, `1m`, `$__range`, `1h`).Replace(q.target.Expr)
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query_%d", i), Expr: expr})
	}
	doc := map[string]any{"groups": []any{map[string]any{"name": "dashboards", "rules": rules}}}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s\n%s", err, out, b)
	}
}
