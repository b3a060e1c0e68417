//go:build integration

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

func getStatus(t *testing.T, a *agentProc) Status {
	t.Helper()
	resp, err := http.Get(a.http + "/api/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestAPIStatus checks /api/status against what the agent was sent.
func TestAPIStatus(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, "../../deploy/examples/kpi.yaml", broker, influx, "shopfloor")
	pub := collectortest.Publisher(t, broker.URL())
	now := time.Now().Truncate(time.Second)
	collectortest.Publish(t, pub,
		collectortest.Message{Topic: "factory/line-1/cnc-1/telemetry", Payload: fmt.Sprintf(`{"ts":%d,"state":"running","spindle_speed":12000}`, now.Add(-2*time.Minute).UnixMilli())},
		collectortest.Message{Topic: "factory/line-1/cnc-1/telemetry", Payload: fmt.Sprintf(`{"ts":%d,"state":"alarm","spindle_speed":0}`, now.Add(-time.Minute).UnixMilli())},
		collectortest.Message{Topic: "factory/line-2/cnc-2/telemetry", Payload: fmt.Sprintf(`{"ts":%d,"state":"idle","power_w":1400}`, now.UnixMilli())},
		collectortest.Message{Topic: "factory/line-2/cnc-2/telemetry", Payload: `{"ts":`},
	)
	var st Status
	collectortest.Eventually(t, 20*time.Second, func() error {
		st = getStatus(t, agent)
		if len(st.Machines) != 2 || st.Sources[0].Messages != 3 {
			return fmt.Errorf("%d machines, %d messages", len(st.Machines), st.Sources[0].Messages)
		}
		return nil
	})
	src := st.Sources[0]
	if src.Name != "factory-mqtt" || src.Kind != "mqtt" || !src.Up || src.BadInputs["invalid_json"] != 1 || len(src.Origins) != 2 {
		t.Errorf("source %+v", src)
	}
	m1, m2 := st.Machines[0], st.Machines[1]
	if m1.Machine != "cnc-1" || m1.Line != "line-1" || m1.State != "alarm" || !m1.StateSince.Equal(now.Add(-time.Minute)) {
		t.Errorf("cnc-1: %+v", m1)
	}
	if len(m1.Timeline) != 2 || m1.Timeline[0].State != "running" || !m1.Timeline[0].To.Equal(now.Add(-time.Minute)) {
		t.Errorf("cnc-1 timeline %+v", m1.Timeline)
	}
	vals := map[string]SignalValue{}
	for _, v := range m1.Values {
		vals[v.Signal] = v
	}
	if v := vals["spindle_speed_rpm"]; v.Value != "0" || v.Unit != "rpm" || v.AgeSeconds < 55 || v.AgeSeconds > 120 {
		t.Errorf("cnc-1 spindle speed %+v", v)
	}
	if m2.Machine != "cnc-2" || m2.State != "idle" {
		t.Errorf("cnc-2: %+v", m2)
	}
	if !st.Sink.Up || st.Sink.Endpoint == "" || !st.Agent.KPIEnabled {
		t.Errorf("sink %+v, agent %+v", st.Sink, st.Agent)
	}
	agent.stop()
}

// TestStatusAuth: bound with credentials, the page and API need them;
// probes and metrics do not.
func TestStatusAuth(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	orig, _ := os.ReadFile(exampleConfig)
	cfg := strings.Replace(string(orig), "    listen: ${SHOPFLOOR_HTTP:-127.0.0.1:9180}",
		"    listen: ${SHOPFLOOR_HTTP:-127.0.0.1:9180}\n    auth: {username: foreman, password: s3cret, token: t0ken}", 1)
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	agent := startAgent(t, path, broker, influx, "shopfloor")
	try := func(p string, set func(*http.Request)) int {
		req, _ := http.NewRequest("GET", agent.http+p, nil)
		if set != nil {
			set(req)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tests := []struct {
		path string
		set  func(*http.Request)
		want int
	}{
		{"/", nil, 401},
		{"/api/status", nil, 401},
		{"/api/status", func(r *http.Request) { r.SetBasicAuth("foreman", "wrong") }, 401},
		{"/api/status", func(r *http.Request) { r.SetBasicAuth("foreman", "s3cret") }, 200},
		{"/", func(r *http.Request) { r.Header.Set("Authorization", "Bearer t0ken") }, 200},
		{"/metrics", nil, 200},
		{"/healthz", nil, 200},
	}
	for _, tt := range tests {
		if got := try(tt.path, tt.set); got != tt.want {
			t.Errorf("GET %s: %d, want %d", tt.path, got, tt.want)
		}
	}
	agent.stop()
}

// TestStatusPageInBrowser opens the page in headless Chromium against an
// agent fed by the simulator: the machines are listed, their states
// change, and a source cut off turns red within seconds. It saves a
// screenshot in testdata-artifacts/.
func TestStatusPageInBrowser(t *testing.T) {
	chromium := os.Getenv("SHOPFLOOR_CHROMIUM")
	if chromium == "" {
		t.Fatal("SHOPFLOOR_CHROMIUM is not set: run integration tests through `make test`")
	}
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, "testdata/simulated.yaml", broker, influx, "shopfloor")
	sim := exec.Command(agentBin, "simulate", "--mqtt", broker.URL(), "--cncs", "4", "--robots", "2", "--time-factor", "600", "--seed", "7")
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Process.Kill(); _ = sim.Wait() })

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.WindowSize(1400, 1000), chromedp.Flag("headless", "new"))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 90*time.Second)
	defer cancel()

	states := func() map[string]string {
		pairs, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("[data-machine]")].map(e => e.dataset.machine + "=" + e.dataset.state)`))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, p := range pairs {
			k, v, _ := strings.Cut(p, "=")
			out[k] = v
		}
		return out
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(agent.http+"/"), chromedp.WaitVisible(`[data-machine="robot-02"]`)); err != nil {
		t.Fatalf("the page never listed robot-02: %v", err)
	}
	first := states()
	if len(first) != 6 {
		t.Fatalf("page lists %v, want 6 machines", first)
	}
	collectortest.Eventually(t, 45*time.Second, func() error {
		now := states()
		for m, s := range now {
			if first[m] != s {
				return nil
			}
		}
		return fmt.Errorf("no machine changed state yet: %v", now)
	})
	up, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('[data-source="simulator"]').dataset.up`))
	if err != nil || up != "true" {
		t.Fatalf("source row data-up %q (%v), want true", up, err)
	}
	broker.Stop()
	start := time.Now()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(`tr.source-down[data-source="simulator"]`)); err != nil {
		t.Fatalf("the cut-off source did not turn red: %v", err)
	}
	t.Logf("the cut-off source turned red after %s", time.Since(start).Round(100*time.Millisecond))
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("..", "..", "testdata-artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "status-page.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	agent.stop()
}
