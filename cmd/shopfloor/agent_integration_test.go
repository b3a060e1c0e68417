//go:build integration

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// agentBin is the shopfloor binary built once for all tests, so that the
// tests run the program a user runs, signals and exit codes included.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shopfloor-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if agentBin, err = collectortest.BuildBinary(".", dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const exampleConfig = "../../deploy/examples/mqtt-json.yaml"

// agentProc is a running `shopfloor agent` process.
type agentProc struct {
	t      *testing.T
	config string
	env    []string
	http   string // base URL of its HTTP listener
	logs   string // path of its log file, kept across restarts
	data   string // its data directory, kept across restarts
	cmd    *exec.Cmd
	done   chan error
}

// startAgent runs the agent on config with the endpoints of broker and
// influx in the variables the example configs read, and waits until
// /readyz says every source and the sink are up.
func startAgent(t *testing.T, config string, broker, influx *collectortest.Service, db string) *agentProc {
	t.Helper()
	dir := t.TempDir()
	return launchAgent(t, config, filepath.Join(dir, "data"), filepath.Join(dir, "agent.log"),
		"MQTT_URL="+broker.URL(), "INFLUX_URL="+influx.URL(), "INFLUX_BUCKET="+db, "INFLUX_TOKEN=")
}

// launchAgent starts the agent on config with data as its data directory,
// its output in logs, a free HTTP port and env added to this process's
// environment. It is killed when the test ends, and its log shown if the
// test failed.
func launchAgent(t *testing.T, config, data, logs string, env ...string) *agentProc {
	t.Helper()
	a := &agentProc{t: t, config: config, data: data, logs: logs,
		http: fmt.Sprintf("127.0.0.1:%d", collectortest.FreePort(t))}
	a.env = append(append(os.Environ(), env...), "SHOPFLOOR_HTTP="+a.http, "SHOPFLOOR_DATA_DIR="+a.data)
	a.http = "http://" + a.http
	t.Cleanup(func() {
		a.kill()
		if t.Failed() {
			b, _ := os.ReadFile(a.logs)
			t.Logf("agent log %s:\n%s", a.logs, b)
		}
	})
	a.start()
	return a
}

func (a *agentProc) start() {
	a.t.Helper()
	f, err := os.OpenFile(a.logs, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		a.t.Fatal(err)
	}
	a.cmd = exec.Command(agentBin, "agent", "--config", a.config)
	a.cmd.Env = a.env
	a.cmd.Stdout, a.cmd.Stderr = f, f
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.done = make(chan error, 1)
	go func() { a.done <- a.cmd.Wait(); f.Close() }()
	a.waitReady()
}

func (a *agentProc) waitReady() {
	a.t.Helper()
	collectortest.Eventually(a.t, 30*time.Second, func() error {
		select {
		case err := <-a.done:
			a.done <- err
			a.t.Fatalf("agent exited during start-up: %v", err)
		default:
		}
		code, body := a.get("/readyz")
		if code != http.StatusOK {
			return fmt.Errorf("/readyz %d: %s", code, body)
		}
		return nil
	})
}

// kill ends the agent with SIGKILL: no draining, no clean disconnect, as
// when someone pulls the power.
func (a *agentProc) kill() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Kill()
	<-a.done
	a.cmd = nil
}

// stop sends SIGTERM and wants a clean exit 0.
func (a *agentProc) stop() {
	a.t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		a.t.Fatal(err)
	}
	select {
	case err := <-a.done:
		a.cmd = nil
		if err != nil {
			a.t.Fatalf("agent exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(30 * time.Second):
		a.t.Fatal("agent did not exit within 30 s of SIGTERM")
	}
}

func (a *agentProc) running() bool {
	select {
	case err := <-a.done:
		a.done <- err
		return false
	default:
		return a.cmd != nil
	}
}

func (a *agentProc) get(path string) (int, string) {
	resp, err := http.Get(a.http + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample of name whose labels include all
// of labels ("k=v"), or -1 when there is none.
func metric(body, name string, labels ...string) float64 {
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			if !strings.Contains(line, k+`="`+v+`"`) {
				continue next
			}
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return -1
		}
		return f
	}
	return -1
}

// telemetry is one message of the example's shape.
func telemetry(line, machine string, ts int64, i int) collectortest.Message {
	p := telemetryPayload(line, machine, ts, i)
	return collectortest.Message{Topic: p[0], Payload: p[1]}
}

// countField waits until db holds want points of field, and fails if it
// ever holds more.
func countField(t *testing.T, influxURL, db, field string, want int, timeout time.Duration) {
	t.Helper()
	collectortest.Eventually(t, timeout, func() error {
		series, err := collectortest.QueryErr(influxURL, db, fmt.Sprintf("SELECT count(%q) FROM machine", field))
		if err != nil {
			return err
		}
		got := 0
		if len(series) > 0 && len(series[0].Values) > 0 {
			n, _ := series[0].Values[0][1].(json.Number).Int64()
			got = int(n)
		}
		if got > want {
			t.Fatalf("%s: %d points, more than the %d sent", field, got, want)
		}
		if got != want {
			return fmt.Errorf("%s: %d points, want %d", field, got, want)
		}
		return nil
	})
}

const baseMS = int64(1764403200000) // 2025-11-29T08:00:00Z

// TestTenThousandMessagesFromFiftyMachines is the agent's main path with
// the shipped example config: QoS 1 JSON through real Mosquitto into real
// InfluxDB, every message one point with the right tags, types and time.
func TestTenThousandMessagesFromFiftyMachines(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, exampleConfig, broker, influx, "shopfloor")

	const machines, perMachine = 50, 200
	lineOf := func(m int) string { return fmt.Sprintf("line-%d", m%5+1) }
	var msgs []collectortest.Message
	for i := 0; i < perMachine; i++ {
		for m := 0; m < machines; m++ {
			msgs = append(msgs, telemetry(lineOf(m), fmt.Sprintf("cnc-%02d", m), baseMS+int64(i)*1000+int64(m), i))
		}
	}
	collectortest.Publish(t, collectortest.Publisher(t, broker.URL()), msgs...)

	fields := map[string]string{
		"state": "string", "spindle_speed_rpm": "float", "spindle_load_pct": "float",
		"part_count_good": "integer", "temperature_c": "float", "power_w": "float", "program": "string",
	}
	for f := range fields {
		countField(t, influx.URL(), "shopfloor", f, machines*perMachine, 60*time.Second)
	}

	// Types: one field per canonical signal, with the canonical type.
	_, rows := collectortest.Query(t, influx.URL(), "shopfloor", "SHOW FIELD KEYS FROM machine")
	gotFields := map[string]string{}
	for _, r := range rows {
		gotFields[r[0].(string)] = r[1].(string)
	}
	if len(gotFields) != len(fields) {
		t.Errorf("fields %v, want exactly %v", gotFields, fields)
	}
	for f, typ := range fields {
		if gotFields[f] != typ {
			t.Errorf("field %s has type %q, want %q", f, gotFields[f], typ)
		}
	}

	// Tags: one series per machine, on its line, with the fixed site and type.
	series, err := collectortest.QueryErr(influx.URL(), "shopfloor",
		`SELECT count(spindle_speed_rpm) FROM machine GROUP BY site, line, machine, machine_type`)
	if err != nil {
		t.Fatal(err)
	}
	if len(series) != machines {
		t.Fatalf("%d series, want one per machine (%d)", len(series), machines)
	}
	for _, s := range series {
		var m int
		if _, err := fmt.Sscanf(s.Tags["machine"], "cnc-%d", &m); err != nil {
			t.Fatalf("machine tag %q: %v", s.Tags["machine"], err)
		}
		if s.Tags["line"] != lineOf(m) || s.Tags["site"] != "plant" || s.Tags["machine_type"] != "cnc" {
			t.Errorf("series tags %v, want line %s, site plant, machine_type cnc", s.Tags, lineOf(m))
		}
		if n, _ := s.Values[0][1].(json.Number).Int64(); n != perMachine {
			t.Errorf("machine %s has %d points, want %d", s.Tags["machine"], n, perMachine)
		}
	}

	// Timestamps and values: message i of machine 7 is at its own ts.
	const i, m = 123, 7
	ts := (baseMS + int64(i)*1000 + int64(m)) * int64(time.Millisecond)
	cols, rows := collectortest.Query(t, influx.URL(), "shopfloor",
		fmt.Sprintf(`SELECT spindle_speed_rpm, part_count_good, program, "state" FROM machine WHERE machine = 'cnc-07' AND time = %d`, ts))
	if len(rows) != 1 {
		t.Fatalf("point at %d: %d rows (%v), want 1", ts, len(rows), rows)
	}
	got := fmt.Sprint(rows[0])
	want := fmt.Sprint([]any{json.Number(strconv.FormatInt(ts, 10)), json.Number("12123"), json.Number("123"), "O1004", "running"})
	if got != want {
		t.Errorf("point %v = %s, want %s", cols, got, want)
	}

	agent.stop()
}

// TestAgentKilledWhileMessagesArrive: the broker keeps the persistent
// session's QoS 1 messages while the agent is dead, and the restarted
// agent, with the same client id, gets every one.
func TestAgentKilledWhileMessagesArrive(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, exampleConfig, broker, influx, "shopfloor")
	pub := collectortest.Publisher(t, broker.URL())

	batch := func(from, n int) []collectortest.Message {
		msgs := make([]collectortest.Message, n)
		for i := range msgs {
			msgs[i] = telemetry("line-1", fmt.Sprintf("cnc-%02d", (from+i)%10), baseMS+int64(from+i)*10, from+i)
		}
		return msgs
	}
	collectortest.Publish(t, pub, batch(0, 100)...)
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 100, 30*time.Second)

	agent.kill()
	collectortest.Publish(t, pub, batch(100, 1000)...)
	agent.start()
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 1100, 60*time.Second)
	agent.stop()
}

// TestBrokerRestartMidStream: after Mosquitto restarts, the agent
// reconnects and resubscribes by itself, and what is published after the
// restart arrives — never "connected but nothing arrives".
func TestBrokerRestartMidStream(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, exampleConfig, broker, influx, "shopfloor")

	msgs := func(from, n int) []collectortest.Message {
		out := make([]collectortest.Message, n)
		for i := range out {
			out[i] = telemetry("line-2", "robot-cell-1", baseMS+int64(from+i)*10, from+i)
		}
		return out
	}
	collectortest.Publish(t, collectortest.Publisher(t, broker.URL()), msgs(0, 500)...)
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 500, 30*time.Second)

	broker.Restart()
	agent.waitReady()
	collectortest.Publish(t, collectortest.Publisher(t, broker.URL()), msgs(500, 500)...)
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 1000, 60*time.Second)

	_, body := agent.get("/metrics")
	if r := metric(body, "shopfloor_source_restarts_total", "source=factory-mqtt"); r < 1 {
		t.Errorf("shopfloor_source_restarts_total = %v after a broker restart, want at least 1", r)
	}
	agent.stop()
}

// TestBadInputIsCountedAndSkipped mixes valid messages with every kind of
// bad input: exactly the valid ones arrive, /metrics counts each kind, and
// the agent stays up.
func TestBadInputIsCountedAndSkipped(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, "testdata/strict.yaml", broker, influx, "shopfloor")

	topic := "factory/line-3/cnc-31/telemetry"
	ts := func(i int) int64 { return baseMS + int64(i)*1000 }
	bad := []struct {
		reason  string
		payload func(i int) string
	}{
		{"invalid_json", func(i int) string { return fmt.Sprintf(`{"ts":%d,"spindle_speed":`, ts(i)) }},
		{"not_an_object", func(i int) string { return `[1,2,3]` }},
		{"wrong_type", func(i int) string { return fmt.Sprintf(`{"ts":%d,"spindle_speed":"fast"}`, ts(i)) }},
		{"non_finite", func(i int) string { return fmt.Sprintf(`{"ts":%d,"spindle_speed":1e999}`, ts(i)) }},
		{"oversized", func(i int) string {
			return fmt.Sprintf(`{"ts":%d,"spindle_speed":1,"program":%q}`, ts(i), strings.Repeat("G1 X1 Y1 ", 600))
		}},
		{"unknown_field", func(i int) string { return fmt.Sprintf(`{"ts":%d,"spindle_speed":1,"coolant_temp":20}`, ts(i)) }},
		{"bad_timestamp", func(i int) string { return `{"ts":"yesterday","spindle_speed":1}` }},
		{"unknown_state", func(i int) string { return fmt.Sprintf(`{"ts":%d,"state":"dancing"}`, ts(i)) }},
	}
	const valid, perKind = 200, 3
	var msgs []collectortest.Message
	sent := map[string]int{}
	addBad := func(k, i int) {
		// Bad messages use timestamps of their own, so none could
		// overwrite a valid point and hide a loss.
		msgs = append(msgs, collectortest.Message{Topic: topic, Payload: bad[k].payload(100000 + i)})
		sent[bad[k].reason]++
	}
	for i := 0; i < valid; i++ {
		msgs = append(msgs, collectortest.Message{Topic: topic, Payload: fmt.Sprintf(`{"ts":%d,"spindle_speed":%d,"state":"running"}`, ts(i), 1000+i)})
		if i%7 == 0 {
			addBad((i/7)%len(bad), i)
		}
	}
	for k := range bad {
		for j := 0; j < perKind; j++ {
			addBad(k, valid+k*perKind+j)
		}
	}
	collectortest.Publish(t, collectortest.Publisher(t, broker.URL()), msgs...)

	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", valid, 60*time.Second)
	countField(t, influx.URL(), "shopfloor", "state", valid, 10*time.Second)

	collectortest.Eventually(t, 10*time.Second, func() error {
		_, body := agent.get("/metrics")
		for reason, n := range sent {
			if got := metric(body, "shopfloor_source_bad_inputs_total", "source=factory-mqtt", "reason="+reason); got != float64(n) {
				return fmt.Errorf("bad inputs %s = %v, want %d", reason, got, n)
			}
		}
		return nil
	})
	if !agent.running() {
		t.Fatal("the agent exited")
	}
	if code, body := agent.get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d: %s", code, body)
	}
	// And it still takes data.
	collectortest.Publish(t, collectortest.Publisher(t, broker.URL()),
		collectortest.Message{Topic: topic, Payload: fmt.Sprintf(`{"ts":%d,"spindle_speed":1}`, ts(valid))})
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", valid+1, 30*time.Second)
	agent.stop()
}

// TestMetricsPassPromtool lints /metrics with Prometheus's own checker,
// after traffic, so every labelled series exists.
func TestMetricsPassPromtool(t *testing.T) {
	promtool := os.Getenv("SHOPFLOOR_PROMTOOL")
	if promtool == "" {
		t.Fatal("SHOPFLOOR_PROMTOOL is not set: run integration tests through `make test`")
	}
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, exampleConfig, broker, influx, "shopfloor")
	collectortest.Publish(t, collectortest.Publisher(t, broker.URL()),
		telemetry("line-1", "cnc-01", baseMS, 1),
		collectortest.Message{Topic: "factory/line-1/cnc-01/telemetry", Payload: `{"ts":`},
	)
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 1, 30*time.Second)

	// The point can be visible in InfluxDB a moment before the writer
	// counts it.
	var body string
	collectortest.Eventually(t, 10*time.Second, func() error {
		var code int
		code, body = agent.get("/metrics")
		if code != http.StatusOK {
			return fmt.Errorf("/metrics %d", code)
		}
		if n := metric(body, "shopfloor_sink_samples_written_total", "sink=influxdb"); n != 7 {
			return fmt.Errorf("shopfloor_sink_samples_written_total = %v, want 7", n)
		}
		return nil
	})
	for _, name := range []string{
		"shopfloor_source_messages_total", "shopfloor_source_samples_total", "shopfloor_source_bad_inputs_total",
		"shopfloor_sink_samples_written_total", "shopfloor_sink_batch_duration_seconds_bucket",
		"shopfloor_queue_samples", "shopfloor_queue_oldest_age_seconds", "shopfloor_queue_dropped_samples_total", "go_goroutines", "process_resident_memory_bytes", "shopfloor_build_info",
	} {
		if metric(body, name) < 0 {
			t.Errorf("/metrics has no %s", name)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out.String())
	}
	agent.stop()
}

// TestDeadDatabaseLosesNothing: while InfluxDB is down, or up without the
// database, the agent reports the sink as not ready and keeps the data
// (its queue, then the broker); once the database is back, everything
// arrives.
func TestDeadDatabaseLosesNothing(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	agent := startAgent(t, exampleConfig, broker, influx, "shopfloor")
	pub := collectortest.Publisher(t, broker.URL())
	msgs := func(from, n int) []collectortest.Message {
		out := make([]collectortest.Message, n)
		for i := range out {
			out[i] = telemetry("line-4", fmt.Sprintf("cnc-4%d", (from+i)%3), baseMS+int64(from+i)*10, from+i)
		}
		return out
	}
	notReady := func(want string) {
		t.Helper()
		collectortest.Eventually(t, 30*time.Second, func() error {
			code, body := agent.get("/readyz")
			if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
				return fmt.Errorf("/readyz %d %s, want 503 naming %q", code, body, want)
			}
			return nil
		})
	}

	// No database yet: a 404 that a person must fix, not a reason to drop.
	collectortest.Publish(t, pub, msgs(0, 200)...)
	notReady("no such bucket")
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 200, 60*time.Second)
	agent.waitReady()

	// The server goes away mid-stream and comes back.
	influx.Stop()
	collectortest.Publish(t, pub, msgs(200, 300)...)
	notReady("cannot be reached")
	influx.Start()
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 500, 90*time.Second)
	agent.waitReady()
	agent.stop()
}

// TestReloadOnSIGHUP: SIGHUP with a broken file keeps the agent running
// on its config; with a valid one the agent restarts on the new config
// and loses nothing queued.
func TestReloadOnSIGHUP(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	orig, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	agent := startAgent(t, path, broker, influx, "shopfloor")
	pub := collectortest.Publisher(t, broker.URL())
	collectortest.Publish(t, pub, telemetry("line-1", "cnc-01", baseMS, 1))
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 1, 30*time.Second)

	// A broken file: refused, the agent keeps running.
	if err := os.WriteFile(path, []byte("agent: {data_dir: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := agent.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	collectortest.Eventually(t, 10*time.Second, func() error {
		logs, _ := os.ReadFile(agent.logs)
		if !strings.Contains(string(logs), "reload refused") {
			return fmt.Errorf("no refusal in the log yet")
		}
		return nil
	})
	collectortest.Publish(t, pub, telemetry("line-1", "cnc-01", baseMS+1000, 2))
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 2, 30*time.Second)

	// A valid new config: the source gets another name.
	renamed := strings.Replace(string(orig), "name: factory-mqtt", "name: hall-2", 1)
	if err := os.WriteFile(path, []byte(renamed), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := agent.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	collectortest.Eventually(t, 30*time.Second, func() error {
		if agent.metric("shopfloor_source_connected", "source=hall-2") != 1 {
			return fmt.Errorf("source hall-2 not connected yet")
		}
		return nil
	})
	collectortest.Publish(t, pub, telemetry("line-1", "cnc-01", baseMS+2000, 3))
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 3, 30*time.Second)
	if !agent.running() {
		t.Fatal("the agent exited")
	}
	agent.stop()
}
