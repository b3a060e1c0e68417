package collectortest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Environment variables set by deploy/scripts/testenv.sh. Integration tests
// fail, not skip, when they are missing: a test run without its services
// must not look green.
const (
	EnvMosquitto = "SHOPFLOOR_MOSQUITTO" // path of the mosquitto binary
	EnvInfluxd   = "SHOPFLOOR_INFLUXD"   // path of the influxd 1.8 binary
)

// FreePort returns a loopback TCP port that was free a moment ago. It
// is chosen below the kernel's ephemeral range: a port from that range
// can be taken by any outgoing connection (and tests make thousands)
// between this check and the server's bind, which once failed CI.
func FreePort(t testing.TB) int {
	t.Helper()
	low := ephemeralLow()
	const floor = 20000
	if low-floor >= 1000 {
		for range 100 {
			port := floor + rand.IntN(low-floor)
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
			if err == nil {
				l.Close()
				return port
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ephemeralLow is the lowest local port the kernel gives outgoing
// connections (Linux's default when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return low
}

func binary(t testing.TB, env string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		t.Fatalf("%s is not set: run integration tests through `make test` (deploy/scripts/testenv.sh installs and points at the services)", env)
	}
	return p
}

// Service is a real server process owned by one test. It is stopped when
// the test ends.
type Service struct {
	t     testing.TB
	name  string
	args  []string
	bin   string
	dir   string
	Port  int
	ready func() error
	// readyLine is what the process logs once it listens: a probe alone
	// could be answered by another test's server on a port taken
	// between FreePort and the bind.
	readyLine string
	// configure writes the configuration for a port; a service whose
	// port was taken between FreePort and its bind gets another one.
	configure func(port int)
	mu        sync.Mutex
	cmd       *exec.Cmd
	exited    chan struct{} // closed when cmd has been waited for
	logFile   *os.File
}

// begin starts the service on a fresh port, trying again on another
// when the process dies before it answers (most often: another test
// process bound the port first).
func (s *Service) begin() {
	s.t.Helper()
	for attempt := 1; ; attempt++ {
		s.Port = FreePort(s.t)
		s.configure(s.Port)
		err := s.start()
		if err == nil {
			return
		}
		if attempt == 5 || !errors.Is(err, errExited) {
			s.t.Fatal(err)
		}
	}
}

var errExited = errors.New("exited before it answered")

func (s *Service) start() error {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	lf, err := os.OpenFile(filepath.Join(s.dir, s.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s log: %w", s.name, err)
	}
	var logStart int64 // what earlier runs logged
	if fi, err := lf.Stat(); err == nil {
		logStart = fi.Size()
	}
	cmd := exec.Command(s.bin, s.args...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start %s: %w", s.name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.logFile, s.exited = cmd, lf, exited
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			log, _ := os.ReadFile(lf.Name())
			lf.Close()
			s.cmd = nil
			return fmt.Errorf("%s on port %d %w: %s\n%s", s.name, s.Port, errExited, cmd.ProcessState, log)
		default:
		}
		err := s.ready()
		if err == nil {
			if err = s.loggedSince(lf.Name(), logStart); err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			lf.Close()
			s.cmd = nil
			log, _ := os.ReadFile(lf.Name())
			return fmt.Errorf("%s did not become ready on port %d: %v\n%s", s.name, s.Port, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loggedSince reports whether the log holds readyLine after offset, so
// that an earlier run's line does not count after a restart.
func (s *Service) loggedSince(path string, offset int64) error {
	log, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if int64(len(log)) < offset || !strings.Contains(string(log[offset:]), s.readyLine) {
		return fmt.Errorf("%q not logged yet", s.readyLine)
	}
	return nil
}

// Stop ends the process and waits for it. Stopping a stopped service is a no-op.
func (s *Service) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	_ = s.logFile.Close()
	s.cmd = nil
}

// Restart stops the process and starts it again on the same port with the
// same data, waiting until it answers.
func (s *Service) Restart() {
	s.t.Helper()
	s.Stop()
	s.Start()
}

// Start starts a stopped service again.
func (s *Service) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

func tcpReady(port int) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 200*time.Millisecond)
	if err != nil {
		return err
	}
	return c.Close()
}

// Mosquitto starts a private Mosquitto broker for the test, with unbounded
// queues so that a test measures the agent, not the broker's drop policy.
// extraConf lines are appended to its configuration.
func Mosquitto(t testing.TB, extraConf ...string) *Service {
	t.Helper()
	s := newMosquitto(t, extraConf...)
	s.begin()
	t.Cleanup(s.Stop)
	return s
}

func newMosquitto(t testing.TB, extraConf ...string) *Service {
	dir := t.TempDir()
	confPath := filepath.Join(dir, "mosquitto.conf")
	s := &Service{t: t, name: "mosquitto", bin: binary(t, EnvMosquitto), dir: dir, args: []string{"-c", confPath}}
	s.ready = func() error { return tcpReady(s.Port) }
	s.readyLine = " running"
	s.configure = func(port int) {
		// user root: run as root (CI is), Mosquitto would otherwise switch to
		// the mosquitto user, which cannot read the test's private temp
		// folders (persistence, certificates, password file).
		conf := fmt.Sprintf(`user root
listener %d 127.0.0.1
allow_anonymous true
persistence true
persistence_location %s/
max_queued_messages 0
max_inflight_messages 0
autosave_interval 1
`, port, dir) + strings.Join(extraConf, "\n") + "\n"
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// URL is the broker's MQTT address (tcp://127.0.0.1:port).
func (s *Service) URL() string {
	if s.name == "influxd" {
		return "http://127.0.0.1:" + strconv.Itoa(s.Port)
	}
	return "tcp://127.0.0.1:" + strconv.Itoa(s.Port)
}

// Influx starts a private InfluxDB 1.8 for the test. Its /api/v2/write
// takes bucket "db/rp" and any token; use InfluxQL to read back.
func Influx(t testing.TB) *Service {
	t.Helper()
	dir := t.TempDir()
	confPath := filepath.Join(dir, "influxdb.conf")
	s := &Service{t: t, name: "influxd", bin: binary(t, EnvInfluxd), dir: dir, args: []string{"-config", confPath}}
	s.readyLine = "Listening on HTTP"
	s.configure = func(port int) {
		conf := fmt.Sprintf(`reporting-disabled = true
bind-address = "127.0.0.1:%d"
[meta]
  dir = "%[2]s/meta"
[data]
  dir = "%[2]s/data"
  wal-dir = "%[2]s/wal"
  query-log-enabled = false
  index-version = "inmem"
[http]
  bind-address = "127.0.0.1:%[3]d"
  log-enabled = false
  flux-enabled = true
  max-body-size = 0
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
`, FreePort(t), dir, port)
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.ready = func() error {
		resp, err := http.Get(s.URL() + "/ping")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			return fmt.Errorf("ping: %s", resp.Status)
		}
		return nil
	}
	s.begin()
	t.Cleanup(s.Stop)
	return s
}

// Query runs one InfluxQL statement against db and returns the rows of the
// first series of the first result, each row a list of column values (JSON
// numbers decode as json.Number).
func Query(t testing.TB, influxURL, db, q string) (columns []string, rows [][]any) {
	t.Helper()
	res, err := QueryErr(influxURL, db, q)
	if err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	if len(res) == 0 {
		return nil, nil
	}
	return res[0].Columns, res[0].Values
}

// Series is one series of an InfluxQL answer.
type Series struct {
	Name    string            `json:"name"`
	Tags    map[string]string `json:"tags"`
	Columns []string          `json:"columns"`
	Values  [][]any           `json:"values"`
}

// QueryErr runs one InfluxQL statement and returns every series of the
// first result. It is for polling loops that must not fail the test on a
// transient error.
func QueryErr(influxURL, db, q string) ([]Series, error) {
	form := url.Values{"q": {q}, "db": {db}, "epoch": {"ns"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, influxURL+"/query", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Results []struct {
			Series []Series `json:"series"`
			Error  string   `json:"error"`
		} `json:"results"`
		Error string `json:"error"`
	}
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber()
	if err := dec.Decode(&body); err != nil {
		return nil, fmt.Errorf("decode answer (%s): %w", resp.Status, err)
	}
	if body.Error != "" {
		return nil, fmt.Errorf("influx: %s", body.Error)
	}
	if len(body.Results) == 0 {
		return nil, nil
	}
	if body.Results[0].Error != "" {
		return nil, fmt.Errorf("influx: %s", body.Results[0].Error)
	}
	return body.Results[0].Series, nil
}

// CreateDatabase creates db on an InfluxDB 1.8 server.
func CreateDatabase(t testing.TB, influxURL, db string) {
	t.Helper()
	if _, err := QueryErr(influxURL, "", "CREATE DATABASE "+strconv.Quote(db)); err != nil {
		t.Fatalf("create database %s: %v", db, err)
	}
}

// LastValue reads the newest value of field for machine from the
// measurement machine, formatted as text; an error until there is one.
func LastValue(influxURL, db, machine, field string) (string, error) {
	res, err := QueryErr(influxURL, db, fmt.Sprintf(`SELECT LAST(%q) FROM machine WHERE machine = '%s'`, field, machine))
	if err != nil {
		return "", err
	}
	if len(res) == 0 || len(res[0].Values) == 0 {
		return "", fmt.Errorf("no %s for %s", field, machine)
	}
	return fmt.Sprint(res[0].Values[0][1]), nil
}

// Eventually polls cond every 50 ms until it returns nil or timeout passes,
// then fails the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
