package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestCheckBrokenConfigs runs `shopfloor check` on the broken configs in
// testdata and wants every problem, each with its line and key, and a
// non-zero exit.
func TestCheckBrokenConfigs(t *testing.T) {
	tests := []struct {
		file string
		want []string // "line: key" prefixes, in order
	}{
		{"broken-keys.yaml", []string{
			"3: agent.htp: unknown key; did you mean \"http\"",
			"10: sources[0].mqtt.keepalive: unknown key; did you mean \"keep_alive\"",
			"13: sources[0].mqtt.subscriptions[0].qos: want a whole number",
			"19: sources[0].mapping[0].scale: want a number",
			"24: sink.influxdb.batch_size: want a whole number",
			"25: sink.influxdb.bucket: given twice (first on line 23)",
		}},
		{"broken-values.yaml", []string{
			"4: agent.http.listen:",
			"6: agent.log.level:",
			"7: agent.log.format:",
			"10: sources[0].mqtt.client_id: is required",
			"11: sources[0].mqtt.url: scheme \"http\" is not supported",
			"13: sources[0].mqtt.subscriptions[0].topic:",
			"14: sources[0].mqtt.subscriptions[0].qos:",
			"17: sources[0].asset.from_origin[0]:",
			"22: sources[0].mapping[0].states.1: \"spinning\" is not a machine state",
			"25: sources[0].mapping[1].unit: unknown unit \"furlongs\"",
			"26: sources[1].mqtt: is missing",
			"26: sources[1].name: \"press-shop\" is used by an earlier source",
			"28: sink.influxdb.url: is required",
			"30: sink.influxdb.timeout: must be positive",
		}},
		{"broken-env.yaml", []string{
			"2: environment variable SHOPFLOOR_CHECK_TEST_UNSET_DIR is not set",
			"6: environment variable SHOPFLOOR_CHECK_TEST_UNSET_URL is not set",
		}},
		{"broken-syntax.yaml", []string{
			"5: YAML syntax:",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := "testdata/" + tt.file
			var stdout, stderr bytes.Buffer
			code := run([]string{"check", "--config", path}, &stdout, &stderr)
			if code == exitOK {
				t.Fatalf("check exited 0 on %s; stdout:\n%s", path, stdout.String())
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if len(lines) != len(tt.want)+1 {
				t.Fatalf("got %d lines, want %d problems and a summary:\n%s", len(lines), len(tt.want), stderr.String())
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], path+":"+w) {
					t.Errorf("line %d = %q\nwant prefix %q", i, lines[i], path+":"+w)
				}
			}
			if summary := fmt.Sprintf("%d problem(s)", len(tt.want)); !strings.Contains(lines[len(lines)-1], summary) {
				t.Errorf("summary %q does not say %q", lines[len(lines)-1], summary)
			}
		})
	}
}

// TestCheckExamples keeps every shipped example valid.
func TestCheckExamples(t *testing.T) {
	examples, _ := filepath.Glob("../../deploy/examples/*.yaml")
	if len(examples) < 2 {
		t.Fatalf("found %d examples", len(examples))
	}
	for _, path := range examples {
		t.Run(filepath.Base(path), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run([]string{"check", "--config", path}, &stdout, &stderr); code != exitOK {
				t.Fatalf("check exited %d:\n%s", code, stderr.String())
			}
			if !strings.Contains(stdout.String(), "ok") {
				t.Errorf("stdout %q does not say ok", stdout.String())
			}
		})
	}
}

func TestAgentRefusesInvalidConfig(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"agent", "--config", "testdata/broken-values.yaml"}, &stdout, &stderr)
	if code != exitUsage {
		t.Fatalf("agent exited %d, want %d", code, exitUsage)
	}
	out := stderr.String()
	for _, w := range []string{"broken-values.yaml:6: agent.log.level", "not starting with an invalid config"} {
		if !strings.Contains(out, w) {
			t.Errorf("stderr lacks %q:\n%s", w, out)
		}
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string
	}{
		{nil, exitUsage, "Usage:"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"check"}, exitUsage, "give exactly one --config FILE"},
		{[]string{"check", "--config", "testdata/does-not-exist.yaml"}, exitUsage, "does-not-exist.yaml"},
		{[]string{"version"}, exitOK, "go1."},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit %d, want %d", code, tt.code)
			}
			if all := stdout.String() + stderr.String(); !strings.Contains(all, tt.out) {
				t.Errorf("output lacks %q:\n%s", tt.out, all)
			}
		})
	}
}

func TestLoggerFormats(t *testing.T) {
	tests := []struct {
		cfg      LogConfig
		wantLine string
		silent   bool
	}{
		{LogConfig{Level: "info", Format: "json"}, `"msg":"hello"`, false},
		{LogConfig{Level: "info", Format: "text"}, `msg=hello`, false},
		{LogConfig{Level: "warn", Format: "text"}, ``, true},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		newLogger(&buf, tt.cfg).Info("hello", "source", "factory-mqtt")
		if tt.silent {
			if buf.Len() != 0 {
				t.Errorf("%+v: logged %q at info, want nothing", tt.cfg, buf.String())
			}
			continue
		}
		if !strings.Contains(buf.String(), tt.wantLine) || !strings.Contains(buf.String(), "factory-mqtt") {
			t.Errorf("%+v: logged %q, want %s", tt.cfg, buf.String(), tt.wantLine)
		}
	}
}

// TestHandlerRoutes builds the agent's HTTP routes with every switch on:
// conflicting patterns panic in net/http, and the profiler must be there.
func TestHandlerRoutes(t *testing.T) {
	var cfg Config
	cfg.Agent.HTTP.Pprof = true
	a := &Agent{cfg: cfg, registry: prometheus.NewRegistry(), log: slog.New(slog.DiscardHandler)}
	h := a.Handler()
	for path, want := range map[string]int{"/healthz": 200, "/debug/pprof/": 200, "/metrics": 200, "/nothing": 404} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != want {
			t.Errorf("GET %s: %d, want %d", path, rec.Code, want)
		}
	}
}
