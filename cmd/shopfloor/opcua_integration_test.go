//go:build integration

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// nodeServerDir holds server.js, the node-opcua server of the OPC UA
// interop tests (see its header for what it serves).
const nodeServerDir = "../../adapters/opcua/testdata/nodeserver"

// The two nodes of server.js that yield nothing, as the agent names them.
const (
	missingNode = "ns=1;s=NoSuchNode"            // BadNodeIdUnknown
	deniedNode  = "ns=1;s=Restricted.WriteOnly"  // BadNotReadable
	deniedPath  = "Objects/Restricted/WriteOnly" // the same, by browse path
	opcuaSource = "plc"                          // the source's name in the config
)

// startOPCUAAgent runs `shopfloor agent` on config, whose only source is
// OPC UA, writing to db on influx, and waits until /readyz says the source
// and the sink are up.
func startOPCUAAgent(t *testing.T, config string, influx *collectortest.Service, db string) *agentProc {
	t.Helper()
	dir := t.TempDir()
	return launchAgent(t, config, filepath.Join(dir, "data"), filepath.Join(dir, "agent.log"),
		"INFLUX_URL="+influx.URL(), "INFLUX_BUCKET="+db)
}

// TestOPCUABadNodesReported runs the agent against node-opcua with good
// nodes, a node id the server does not know and a variable it refuses to
// read. The good values reach InfluxDB; the two bad nodes are listed with
// their reason and status code in /readyz's warnings (the agent stays
// ready) and /api/status, counted by reason in
// shopfloor_source_bad_inputs_total, and tried again on the
// bad_node_retry schedule.
func TestOPCUABadNodesReported(t *testing.T) {
	endpoint := collectortest.NodeOPCUA(t, nodeServerDir)
	influx := collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	config := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, config, fmt.Sprintf(`agent:
  data_dir: ${SHOPFLOOR_DATA_DIR}
  http:
    listen: ${SHOPFLOOR_HTTP}
sources:
  - name: %s
    opcua:
      endpoint: %s
      publishing_interval: 200ms
      bad_node_retry: 1s
      nodes:
        - path: Objects/Machines/cnc-01/SpindleSpeed
        - node_id: "%s"
        - path: Objects/Machines/cnc-01/ProgramName
        - path: %s
        - path: Objects/Machines/robot-01/CycleCount
    asset:
      from_origin: ["Objects/Machines/{machine}"]
    mapping:
      - {match: SpindleSpeed, signal: spindle_speed_rpm}
      - {match: ProgramName, signal: program}
      - {match: CycleCount, signal: cycle_count}
sink:
  influxdb:
    url: ${INFLUX_URL}
    bucket: ${INFLUX_BUCKET}
`, opcuaSource, endpoint, missingNode, deniedPath))
	agent := startOPCUAAgent(t, config, influx, "shopfloor")

	// The good nodes flow.
	for _, w := range []struct{ machine, field, want string }{
		{"cnc-01", "program", "O1234"},
		{"robot-01", "cycle_count", "42"},
		{"cnc-01", "spindle_speed_rpm", ""}, // changes every 100 ms
	} {
		collectortest.Eventually(t, 30*time.Second, func() error {
			got, err := collectortest.LastValue(influx.URL(), "shopfloor", w.machine, w.field)
			if err != nil {
				return err
			}
			if w.want != "" && got != w.want {
				return fmt.Errorf("%s %s = %s, want %s", w.machine, w.field, got, w.want)
			}
			return nil
		})
	}

	// Each bad node is one warning naming the node, the reason and the
	// server's status code; they do not make the agent unready.
	want := []struct{ node, reason, status string }{
		{missingNode, "node_unknown", "StatusBadNodeIDUnknown"},
		{deniedNode, "access_denied", "StatusBadNotReadable"},
	}
	code, body := agent.get("/readyz")
	var ready Readiness
	if err := json.Unmarshal([]byte(body), &ready); err != nil {
		t.Fatalf("/readyz %d: %v\n%s", code, err, body)
	}
	if code != http.StatusOK || !ready.Ready || len(ready.NotReady) != 0 {
		t.Errorf("/readyz %d, ready %v, not ready %q: two bad nodes must not make the agent unready", code, ready.Ready, ready.NotReady)
	}
	if len(ready.Warnings) != len(want) {
		t.Errorf("/readyz warnings %q, want one per bad node", ready.Warnings)
	}
	for _, w := range want {
		prefix := fmt.Sprintf("source %s: node %s: %s since ", opcuaSource, w.node, w.reason)
		found := false
		for _, line := range ready.Warnings {
			if strings.HasPrefix(line, prefix) && strings.Contains(line, w.status) {
				found = true
			}
		}
		if !found {
			t.Errorf("/readyz warnings %q: none starts %q and names %s", ready.Warnings, prefix, w.status)
		}
	}

	st := getStatus(t, agent)
	if len(st.Sources) != 1 || !st.Sources[0].Up {
		t.Fatalf("/api/status sources %+v, want the OPC UA source up", st.Sources)
	}
	bad := st.Sources[0].BadNodes
	if len(bad) != len(want) {
		t.Errorf("/api/status bad_nodes %+v, want %d", bad, len(want))
	}
	for _, w := range want {
		found := false
		for _, b := range bad {
			if b.Node == w.node && b.Reason == w.reason && strings.Contains(b.Error, w.status) && !b.Since.IsZero() {
				found = true
			}
		}
		if !found {
			t.Errorf("/api/status bad_nodes %+v lack %s (%s, %s)", bad, w.node, w.reason, w.status)
		}
	}

	// Counted by reason, and counted again at each retry.
	for _, w := range want {
		collectortest.Eventually(t, 30*time.Second, func() error {
			got := agent.metric("shopfloor_source_bad_inputs_total", "source="+opcuaSource, "reason="+w.reason)
			if got < 2 {
				return fmt.Errorf("shopfloor_source_bad_inputs_total{reason=%q} = %v, want 2 or more (found, then retried)", w.reason, got)
			}
			return nil
		})
	}
	agent.stop()
}

// TestBrowseSnippetPassesCheck runs `shopfloor browse` against node-opcua:
// it prints the tree of machines and their typed variables and a
// progress line, and writes a config that `shopfloor check` accepts. The
// same config with a mistyped key is refused, naming file and line.
func TestBrowseSnippetPassesCheck(t *testing.T) {
	endpoint := collectortest.NodeOPCUA(t, nodeServerDir)
	dir := t.TempDir()
	snippet := filepath.Join(dir, "opcua.yaml")
	var stdout, stderr bytes.Buffer
	browse := exec.Command(agentBin, "browse", "--endpoint", endpoint, "--data-dir", filepath.Join(dir, "data"),
		"--depth", "4", "--out", snippet)
	browse.Stdout, browse.Stderr = &stdout, &stderr
	if err := browse.Run(); err != nil {
		t.Fatalf("shopfloor browse: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	tree := stdout.String()
	t.Logf("tree:\n%s", tree)

	// Indented by depth: each machine under Machines, each variable
	// with its data type under its machine.
	for _, w := range []struct{ parent, child string }{
		{"Machines/", "cnc-01/"},
		{"Machines/", "robot-01/"},
		{"cnc-01/", "SpindleSpeed  [Double]"},
		{"cnc-01/", "ProgramName  [String]"},
		{"cnc-01/", "PartCountGood  [UInt32]"},
		{"robot-01/", "JointTorques  [Double[]]"},
		{"robot-01/", "CycleCount  [UInt64]"},
		{"types-01/", "DateTime  [DateTime]"},
	} {
		if err := treeChild(tree, w.parent, w.child); err != nil {
			t.Error(err)
		}
	}
	if !regexp.MustCompile(`browsed \d+ nodes, depth \d of at most 4`).MatchString(stderr.String()) {
		t.Errorf("no progress line on stderr:\n%s", stderr.String())
	}
	if want := "wrote " + snippet + "; check it with: shopfloor check --config " + snippet; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
	}

	data, err := os.ReadFile(snippet)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snippet:\n%s", data)
	for _, want := range []string{`endpoint: "` + endpoint + `"`, `path: "Objects/Machines/*/SpindleSpeed"`,
		"{match: SpindleSpeed, signal: spindle_speed_rpm}", "signal: joint_torque_nm", "Objects/Machines/{machine}", "sink:"} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("snippet lacks %q", want)
		}
	}
	// The snippet is a whole agent config (agent, sources, sink): check
	// takes it as written.
	out, err := exec.Command(agentBin, "check", "--config", snippet).CombinedOutput()
	if err != nil {
		t.Fatalf("shopfloor check on the browse snippet: %v\n%s", err, out)
	}
	if want := snippet + ": ok (1 source(s)"; !strings.HasPrefix(string(out), want) {
		t.Errorf("check said %q, want it to start %q", out, want)
	}

	// A mistyped key in a mapping, as a user editing the snippet might
	// make: check fails and points at the line.
	lines := strings.Split(string(data), "\n")
	line := -1
	for i, l := range lines {
		if strings.Contains(l, "{match: SpindleSpeed, signal: spindle_speed_rpm}") {
			lines[i], line = strings.Replace(l, "signal:", "signl:", 1), i+1
			break
		}
	}
	broken := filepath.Join(dir, "broken.yaml")
	writeFile(t, broken, strings.Join(lines, "\n"))
	out, err = exec.Command(agentBin, "check", "--config", broken).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("shopfloor check on a mistyped key: %v, want a non-zero exit\n%s", err, out)
	}
	re := regexp.MustCompile(fmt.Sprintf(`(?m)^%s:%d: sources\[0\]\.mapping\[\d+\]\.signl: unknown key; did you mean "signal"`, regexp.QuoteMeta(broken), line))
	if !re.Match(out) {
		t.Errorf("check output does not match %s:\n%s", re, out)
	}
}

// treeChild reports whether the browse tree lists child inside the
// block of parent, one level deeper.
func treeChild(tree, parent, child string) error {
	lines := strings.Split(tree, "\n")
	indent := func(l string) int { return len(l) - len(strings.TrimLeft(l, " ")) }
	for i, l := range lines {
		if !strings.HasPrefix(strings.TrimLeft(l, " "), parent+" ") {
			continue
		}
		for _, c := range lines[i+1:] {
			if indent(c) <= indent(l) {
				break
			}
			if indent(c) == indent(l)+2 && strings.HasPrefix(strings.TrimLeft(c, " "), child+" ") {
				return nil
			}
		}
		return fmt.Errorf("tree lists %q but not %q one level under it", parent, child)
	}
	return fmt.Errorf("tree lacks %q", parent)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
