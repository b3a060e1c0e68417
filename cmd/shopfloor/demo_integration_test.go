//go:build integration

package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// TestDemo runs `shopfloor demo` as make demo does, for a short while, and
// finds CNC and robot data from both MQTT and OPC UA and KPI rows in its
// InfluxDB; Ctrl-C (SIGINT) stops it cleanly.
func TestDemo(t *testing.T) {
	influxd := os.Getenv(collectortest.EnvInfluxd)
	if influxd == "" {
		t.Fatalf("%s is not set: run integration tests through `make test`", collectortest.EnvInfluxd)
	}
	dir := t.TempDir()
	cmd := exec.Command(agentBin, "demo", "--influxd", influxd, "--dir", dir,
		"--mqtt", "127.0.0.1:0", "--opcua", "127.0.0.1:0", "--http", fmt.Sprintf("127.0.0.1:%d", collectortest.FreePort(t)),
		"--time-factor", "120", "--progress", "2s")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(dir + "/demo.log")
			t.Logf("demo.log:\n%s", b)
		}
	})
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		done <- cmd.Wait()
	}()
	influxRe := regexp.MustCompile(`InfluxDB\s+(http://\S+)`)
	var influxURL string
	for influxURL == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("demo exited before saying where InfluxDB is")
			}
			if m := influxRe.FindStringSubmatch(l); m != nil {
				influxURL = m[1]
			}
		case <-time.After(90 * time.Second):
			t.Fatal("demo did not start within 90 s")
		}
	}
	go func() {
		for range lines { // keep the pipe drained
		}
	}()

	// Line 1 comes over MQTT, line 2 over OPC UA: a CNC and a robot each.
	for _, q := range []string{
		`SELECT count(spindle_speed_rpm) FROM machine WHERE machine = 'cnc-01' AND machine_type = 'cnc'`,
		`SELECT count(joint_torque_nm_1) FROM machine WHERE machine = 'robot-01' AND machine_type = 'robot'`,
		`SELECT count(spindle_speed_rpm) FROM machine WHERE machine = 'cnc-02' AND machine_type = 'cnc' AND line = 'line-2'`,
		`SELECT count(joint_torque_nm_6) FROM machine WHERE machine = 'robot-02' AND machine_type = 'robot'`,
		`SELECT count(part_count_good) FROM machine WHERE machine = 'cnc-04'`,
		`SELECT count(oee) FROM kpi WHERE "window" = '1m'`,
	} {
		collectortest.Eventually(t, 60*time.Second, func() error {
			series, err := collectortest.QueryErr(influxURL, "shopfloor", q)
			if err != nil || len(series) == 0 {
				return fmt.Errorf("%s: nothing yet (%v)", q, err)
			}
			return nil
		})
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo exited with %v after Ctrl-C, want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop within 30 s of Ctrl-C")
	}
	if _, err := os.Stat(dir + "/agent/queue"); err != nil {
		t.Errorf("the agent's data is not in the demo folder: %v", err)
	}
}
