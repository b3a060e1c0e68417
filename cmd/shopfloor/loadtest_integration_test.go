//go:build integration

package main

import (
	"os/exec"
	"regexp"
	"testing"
)

// TestLoadtestSmoke runs small loads through the harness, so the harness
// itself keeps working; the numbers belong in the closing notes, not in
// an assertion. The broker's queue limits are lifted: with Mosquitto's
// defaults a publisher at full speed makes the broker drop messages (what
// the harness is there to show), and this test is about the harness. The
// Sparkplug load goes through births, aliases and sequence numbers, so a
// point counted means the host application took the node's birth and
// every message in order.
func TestLoadtestSmoke(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		stored   string
		ceilings bool
	}{
		{"json", []string{"--machines", "10", "--messages", "2000", "--qos", "1", "--unbounded-broker"}, "2000", true},
		// 2000 data messages and one DBIRTH per machine, at a set rate.
		{"sparkplug", []string{"--payload", "sparkplug", "--machines", "10", "--messages", "2000", "--rate", "2000", "--unbounded-broker", "--ceilings=false"}, "2010", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(agentBin, append([]string{"loadtest"}, tc.args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("loadtest: %v\n%s", err, out)
			}
			// path, stored, per s, CPU, RSS, p50, p99, loss, cores, broker, influx, harness
			row := regexp.MustCompile(`(?m)^shopfloor agent\s+(\d+)\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(\d+)\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s*$`).FindSubmatch(out)
			if row == nil || string(row[1]) != tc.stored || string(row[2]) != "0" {
				t.Fatalf("want the agent's row with %s stored and 0 lost:\n%s", tc.stored, out)
			}
			if !tc.ceilings {
				return
			}
			for _, path := range []string{"ceiling: broker only", "ceiling: InfluxDB only, 1 conn", "ceiling: InfluxDB only, 2 conn"} {
				if !regexp.MustCompile(regexp.QuoteMeta(path)).Match(out) {
					t.Errorf("no %q row:\n%s", path, out)
				}
			}
		})
	}
}
