//go:build integration

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// TestDemo runs `shopfloor demo` for a short while, both as make demo does
// (it starts its own influxd) and as someone holding only the binary and an
// InfluxDB URL does, and finds CNC and robot data from both MQTT and OPC UA
// and KPI rows in the InfluxDB it wrote to; Ctrl-C (SIGINT) stops it cleanly.
func TestDemo(t *testing.T) {
	influxd := os.Getenv(collectortest.EnvInfluxd)
	if influxd == "" {
		t.Fatalf("%s is not set: run integration tests through `make test`", collectortest.EnvInfluxd)
	}
	t.Run("own influxd", func(t *testing.T) {
		d := startDemo(t, "--influxd", influxd)
		waitDemoData(t, d.influxURL, "shopfloor")
		// The other case's check that no influxd runs means something
		// only if it finds the one this case starts.
		if kids := childNames(t, d.cmd.Process.Pid); !slices.Contains(kids, "influxd") {
			t.Errorf("demo --influxd has children %q, want an influxd among them", kids)
		}
		d.interrupt(t)
		if _, err := os.Stat(filepath.Join(d.dir, "agent", "queue")); err != nil {
			t.Errorf("the agent's data is not in the demo folder: %v", err)
		}
	})
	t.Run("influx-url", func(t *testing.T) {
		influx := collectortest.Influx(t)
		// A database of the user's naming, which the demo must create.
		d := startDemo(t, "--influx-url", influx.URL(), "--influx-bucket", "plant")
		if d.influxURL != influx.URL() {
			t.Errorf("demo says InfluxDB is at %s, want the given %s", d.influxURL, influx.URL())
		}
		waitDemoData(t, influx.URL(), "plant")
		if kids := childNames(t, d.cmd.Process.Pid); slices.Contains(kids, "influxd") {
			t.Errorf("demo --influx-url started an influxd of its own (children %q)", kids)
		}
		if _, err := os.Stat(filepath.Join(d.dir, "influxdb")); !os.IsNotExist(err) {
			t.Errorf("demo --influx-url made an InfluxDB folder in its demo folder (%v)", err)
		}
		d.interrupt(t)
	})
}

// demoProc is a running `shopfloor demo`.
type demoProc struct {
	cmd       *exec.Cmd
	dir       string
	influxURL string // as the demo prints it
	done      chan error
}

// startDemo runs `shopfloor demo` with args on free ports, in a folder of
// its own, and waits until it says where its InfluxDB is.
func startDemo(t *testing.T, args ...string) *demoProc {
	t.Helper()
	d := &demoProc{dir: t.TempDir(), done: make(chan error, 1)}
	d.cmd = exec.Command(agentBin, append([]string{"demo", "--dir", d.dir,
		"--mqtt", "127.0.0.1:0", "--opcua", "127.0.0.1:0", "--http", fmt.Sprintf("127.0.0.1:%d", collectortest.FreePort(t)),
		"--time-factor", "120", "--progress", "2s"}, args...)...)
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stderr = os.Stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(d.dir, "demo.log"))
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
		d.done <- d.cmd.Wait()
	}()
	influxRe := regexp.MustCompile(`InfluxDB\s+(http://\S+)`)
	for d.influxURL == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("demo exited before saying where InfluxDB is")
			}
			if m := influxRe.FindStringSubmatch(l); m != nil {
				d.influxURL = m[1]
			}
		case <-time.After(90 * time.Second):
			t.Fatal("demo did not start within 90 s")
		}
	}
	go func() {
		for range lines { // keep the pipe drained
		}
	}()
	return d
}

// waitDemoData waits for the demo's data in db: line 1 comes over MQTT,
// line 2 over OPC UA, a CNC and a robot each, and the KPIs.
func waitDemoData(t *testing.T, influxURL, db string) {
	t.Helper()
	for _, q := range []string{
		`SELECT count(spindle_speed_rpm) FROM machine WHERE machine = 'cnc-01' AND machine_type = 'cnc'`,
		`SELECT count(joint_torque_nm_1) FROM machine WHERE machine = 'robot-01' AND machine_type = 'robot'`,
		`SELECT count(spindle_speed_rpm) FROM machine WHERE machine = 'cnc-02' AND machine_type = 'cnc' AND line = 'line-2'`,
		`SELECT count(joint_torque_nm_6) FROM machine WHERE machine = 'robot-02' AND machine_type = 'robot'`,
		`SELECT count(part_count_good) FROM machine WHERE machine = 'cnc-04'`,
		`SELECT count(oee) FROM kpi WHERE "window" = '1m'`,
	} {
		collectortest.Eventually(t, 60*time.Second, func() error {
			series, err := collectortest.QueryErr(influxURL, db, q)
			if err != nil || len(series) == 0 {
				return fmt.Errorf("%s: nothing yet in %s (%v)", q, db, err)
			}
			return nil
		})
	}
}

// interrupt sends Ctrl-C (SIGINT) and wants the demo to exit 0.
func (d *demoProc) interrupt(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("demo exited with %v after Ctrl-C, want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop within 30 s of Ctrl-C")
	}
}

// childNames returns the command names of pid's child processes, from
// /proc/<pid>/stat of every process ("pid (comm) state ppid ...").
func childNames(t *testing.T, pid int) []string {
	t.Helper()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/stat", pid)); err != nil {
		t.Fatalf("the child process check needs Linux's /proc: %v", err)
	}
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the process has gone
		}
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open {
			continue
		}
		var state string
		var ppid int
		if _, err := fmt.Sscan(string(b[end+1:]), &state, &ppid); err == nil && ppid == pid {
			names = append(names, string(b[open+1:end]))
		}
	}
	return names
}
