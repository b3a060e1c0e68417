// Package systemd holds the tests of the shopfloor systemd unit; the unit
// and the sysusers file beside it are what gets installed.
package systemd

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

const unitFile = "shopfloor.service"

// parseUnit reads a unit file into section -> key -> values (a key may
// repeat, as ExecReload= does).
func parseUnit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", path, n, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

// TestUnitIsHardened checks the promises the deploy README makes about
// the unit: a dedicated user, a read-only system with one state directory
// for the queue, no privileges, SIGTERM to drain and SIGHUP to reload.
func TestUnitIsHardened(t *testing.T) {
	u := parseUnit(t, unitFile)
	svc := u["Service"]
	want := map[string]string{
		"User":                     "shopfloor",
		"Group":                    "shopfloor",
		"ProtectSystem":            "strict",
		"ProtectHome":              "yes",
		"PrivateTmp":               "yes",
		"PrivateDevices":           "yes",
		"NoNewPrivileges":          "yes",
		"CapabilityBoundingSet":    "",
		"StateDirectory":           "shopfloor",
		"Environment":              "SHOPFLOOR_DATA_DIR=/var/lib/shopfloor",
		"KillSignal":               "SIGTERM",
		"Restart":                  "always",
		"RestartPreventExitStatus": "2",
		"MemoryDenyWriteExecute":   "yes",
		"SystemCallArchitectures":  "native",
	}
	for k, v := range want {
		got, ok := svc[k]
		if !ok || got[len(got)-1] != v {
			t.Errorf("[Service] %s = %q, want %q", k, got, v)
		}
	}
	if got := svc["ExecStart"]; len(got) != 1 || !strings.HasSuffix(got[0], "shopfloor agent --config /etc/shopfloor/agent.yaml") {
		t.Errorf("ExecStart = %q, want the agent with /etc/shopfloor/agent.yaml", got)
	}
	reload := svc["ExecReload"]
	if len(reload) == 0 || reload[len(reload)-1] != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload = %q, want it to end with SIGHUP to the main process", reload)
	}
	if len(reload) < 2 || !strings.Contains(reload[0], "shopfloor check --config /etc/shopfloor/agent.yaml") {
		t.Errorf("ExecReload = %q, want a config check before the SIGHUP", reload)
	}
	if _, ok := svc["ReadWritePaths"]; ok {
		t.Errorf("ReadWritePaths is set: the state directory is the only place the agent should write")
	}
	if got := u["Install"]["WantedBy"]; len(got) != 1 || got[0] != "multi-user.target" {
		t.Errorf("[Install] WantedBy = %q", got)
	}
	b, err := os.ReadFile("shopfloor.sysusers")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("\nu shopfloor - ")) {
		t.Errorf("shopfloor.sysusers does not create the user shopfloor:\n%s", b)
	}
}

// TestSystemdAnalyze runs `systemd-analyze verify` and an offline
// `systemd-analyze security` on a copy of the unit whose binary is a real
// build of shopfloor (verify wants ExecStart to exist). Any complaint
// about the unit fails the test, and so does an exposure level above 2.0
// ("OK" in systemd's words; --threshold counts in tenths). Where
// systemd-analyze is missing (containers without systemd) only
// TestUnitIsHardened runs, and this test says so.
func TestSystemdAnalyze(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: the unit was checked by TestUnitIsHardened only")
		return
	}
	dir := t.TempDir()
	bin, err := collectortest.BuildBinary("../../cmd/shopfloor", dir)
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, unitFile)
	if err := os.WriteFile(unit, bytes.ReplaceAll(src, []byte("/usr/local/bin/shopfloor"), []byte(bin)), 0o644); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(analyze, "verify", "--man=no", unit).CombinedOutput()
	// verify exits 0 on unknown keys and bad values: it only warns, naming
	// the file, so any line about our unit is a failure too.
	var complaints []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, unitFile) {
			complaints = append(complaints, l)
		}
	}
	if err != nil || len(complaints) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	out, err = exec.Command(analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", unit).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.0 or an error: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	t.Logf("systemd-analyze security: %s", lines[len(lines)-1])
}
