//go:build integration

package main

import (
	"os/exec"
	"regexp"
	"testing"
)

// TestLoadtestSmoke runs a small load through the harness, ceilings
// included, so the harness itself keeps working; the numbers belong in
// the closing notes, not in an assertion. The broker's queue limits are
// lifted: with Mosquitto's defaults a publisher at full speed makes the
// broker drop messages (what the harness is there to show), and this test
// is about the harness.
func TestLoadtestSmoke(t *testing.T) {
	out, err := exec.Command(agentBin, "loadtest", "--machines", "10", "--messages", "2000", "--qos", "1", "--unbounded-broker").CombinedOutput()
	if err != nil {
		t.Fatalf("loadtest: %v\n%s", err, out)
	}
	// path, stored, per s, CPU, RSS, p50, p99, loss, cores, broker, influx, harness
	row := regexp.MustCompile(`(?m)^shopfloor agent\s+(\d+)\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(\d+)\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s*$`).FindSubmatch(out)
	if row == nil || string(row[1]) != "2000" || string(row[2]) != "0" {
		t.Fatalf("want the agent's row with 2000 stored and 0 lost:\n%s", out)
	}
	for _, path := range []string{"ceiling: broker only", "ceiling: InfluxDB only, 1 conn", "ceiling: InfluxDB only, 2 conn"} {
		if !regexp.MustCompile(regexp.QuoteMeta(path)).Match(out) {
			t.Errorf("no %q row:\n%s", path, out)
		}
	}
}
