package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/noordoostpolder/shopfloor/adapters/simulator"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

//go:embed demo.yaml
var demoConfig []byte

// demoOptions are the flags of `shopfloor demo`.
type demoOptions struct {
	dir        string
	influxd    string // an influxd 1.8 binary to run, or
	influxURL  string // an InfluxDB to use
	influxAddr string // where the influxd started for the demo listens
	token      string
	org        string
	bucket     string
	httpAddr   string
	mqttAddr   string
	opcuaAddr  string
	sim        simulator.Config
	duration   time.Duration // 0: until interrupted
	logLevel   string
	printEvery time.Duration
}

func runDemo(args []string, stdout, stderr io.Writer) int {
	var o demoOptions
	fs := flag.NewFlagSet("shopfloor demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.dir, "dir", ".demo", "the `folder` that holds everything the demo writes")
	fs.StringVar(&o.influxd, "influxd", "", "an influxd 1.8 `binary` to run for the demo (make demo installs one)")
	fs.StringVar(&o.influxAddr, "influx-listen", "127.0.0.1:8086", "the `address` of the influxd started for the demo (it moves to a free port when this one is taken)")
	fs.StringVar(&o.influxURL, "influx-url", "", "an InfluxDB to write to instead, e.g. http://localhost:8086")
	fs.StringVar(&o.token, "influx-token", "", "its API token (2.x) or user:password (1.8 with auth)")
	fs.StringVar(&o.org, "influx-org", "shopfloor", "its organisation (2.x)")
	fs.StringVar(&o.bucket, "influx-bucket", "shopfloor", "its bucket (2.x) or database (1.8)")
	fs.StringVar(&o.httpAddr, "http", "127.0.0.1:9180", "the agent's HTTP `address`")
	fs.StringVar(&o.mqttAddr, "mqtt", "127.0.0.1:1883", "the embedded MQTT broker's `address`")
	fs.StringVar(&o.opcuaAddr, "opcua", "127.0.0.1:4840", "the simulator's OPC UA `address`")
	fs.IntVar(&o.sim.CNCs, "cncs", 4, "simulated CNC machines")
	fs.IntVar(&o.sim.Robots, "robots", 2, "simulated robots")
	fs.Float64Var(&o.sim.TimeFactor, "time-factor", 60, "how much faster than real time the machines run")
	seed := fs.Uint64("seed", 1, "the simulation's seed")
	fs.DurationVar(&o.duration, "duration", 0, "stop after this long (0: run until Ctrl-C)")
	fs.StringVar(&o.logLevel, "log-level", "warn", "the agent's log level (its log is in the demo folder)")
	fs.DurationVar(&o.printEvery, "progress", 10*time.Second, "how often to print a progress line")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	o.sim.Seed = *seed
	o.sim.Lines = 2 // line-1 over MQTT, line-2 over OPC UA
	if (o.influxd == "") == (o.influxURL == "") {
		fmt.Fprintln(stderr, "shopfloor demo: give either --influxd BINARY (make demo does) or --influx-url URL")
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	if err := demo(ctx, o, stdout); err != nil {
		fmt.Fprintf(stderr, "shopfloor demo: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// demoGrafanaCompose brings up Grafana with the dashboards on the demo's
// InfluxDB (deploy/docker-compose.yml is a whole site of its own, whose
// ports the demo already holds).
const demoGrafanaCompose = "deploy/demo-grafana.yml"

// demo runs an MQTT broker, InfluxDB (unless one is given), the simulator
// and the agent until ctx is done.
func demo(ctx context.Context, o demoOptions, out io.Writer) error {
	start := time.Now()
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	logFile, err := os.OpenFile(filepath.Join(dir, "demo.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	defer logFile.Close()
	level, _ := parseLevel(o.logLevel)
	logger := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: level}))
	routePahoLogs(logger)
	// gopcua's server also writes to the standard logger; keep the
	// terminal for the demo's own lines.
	log.SetOutput(logFile)

	// InfluxDB.
	influxURL := o.influxURL
	if o.influxd != "" {
		u, _, stopInflux, err := startInfluxd(ctx, o.influxd, filepath.Join(dir, "influxdb"), o.influxAddr, logFile)
		if err != nil {
			return err
		}
		defer stopInflux()
		influxURL = u
	}
	if o.influxd != "" || o.token == "" {
		// InfluxDB 1.8 needs the database to exist; 2.x answers this
		// query through its 1.x compatibility API or not at all, which
		// is fine: the bucket must exist there anyway.
		_ = createDatabase(influxURL, o.bucket)
	}

	// MQTT broker.
	broker, mqttAddr, err := startBroker(o.mqttAddr, logger)
	if err != nil {
		return err
	}
	defer broker.Close()

	// Simulator: line-1 publishes over MQTT, line-2 is served over OPC UA.
	fleet, err := simulator.NewFleet(o.sim, logger.With("component", "simulator"))
	if err != nil {
		return err
	}
	onLine := func(line string) func(simulator.Placed) bool {
		return func(m simulator.Placed) bool { return m.Line == line }
	}
	var line2 []simulator.Placed
	for _, m := range fleet.Machines {
		if m.Line == "line-2" {
			line2 = append(line2, m)
		}
	}
	opcuaPort, err := freePort(o.opcuaAddr)
	if err != nil {
		return err
	}
	opcuaHost, _, _ := net.SplitHostPort(o.opcuaAddr)
	opcuaSrv, err := simulator.NewOPCUAServer(ctx, simulator.OPCUAConfig{Host: opcuaHost, Port: opcuaPort,
		Dir: filepath.Join(dir, "simulator-pki")}, line2)
	if err != nil {
		return err
	}
	defer opcuaSrv.Close()

	// Agent.
	cfgPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, demoConfig, 0o640); err != nil {
		return err
	}
	env := map[string]string{
		"SHOPFLOOR_DATA_DIR": filepath.Join(dir, "agent"), "SHOPFLOOR_HTTP": o.httpAddr, "SHOPFLOOR_LOG_LEVEL": o.logLevel,
		"MQTT_URL": "tcp://" + mqttAddr, "OPCUA_ENDPOINT": opcuaSrv.Endpoint(), "INFLUX_URL": influxURL, "INFLUX_TOKEN": o.token, "INFLUX_ORG": o.org, "INFLUX_BUCKET": o.bucket,
	}
	var cfg Config
	if err := config.Parse(cfgPath, demoConfig, &cfg, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		return err
	}
	agent, err := NewAgent(cfg, logger.With("component", "agent"))
	if err != nil {
		return err
	}

	pub, err := simulator.NewMQTTPublisher("tcp://"+mqttAddr, "shopfloor-simulator", 1)
	if err != nil {
		return err
	}
	defer pub.Close()

	var wg sync.WaitGroup
	errs := make(chan error, 2)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(2)
	go func() { defer wg.Done(); errs <- agent.Run(runCtx) }()
	go func() { defer wg.Done(); errs <- fleet.Run(runCtx, simulator.Only(pub, onLine("line-1")), opcuaSrv) }()

	fmt.Fprintf(out, `shopfloor demo is running (started in %s)
  machines       %d CNC, %d robots, simulated %gx faster than real time
  MQTT broker    tcp://%s   (line-1: factory/<line>/<machine>/telemetry)
  OPC UA server  %s   (line-2: Objects/Machines/<machine>)
  status page    http://%s/   (also /api/status, /metrics, /readyz)
  InfluxDB       %s   database/bucket %q, measurements "machine" and "kpi"
  config         %s
  data and logs  %s
  Grafana        where Docker is available, in another terminal at the top of the checkout:
                   INFLUX_URL=%s INFLUX_BUCKET=%s docker compose -f %s up
                 then http://127.0.0.1:3000 (admin/admin) shows the dashboards on this demo's data
Ctrl-C stops everything; the next start reuses %s.
`, time.Since(start).Round(10*time.Millisecond), o.sim.CNCs, o.sim.Robots, fleet.TimeFactor(), mqttAddr, opcuaSrv.Endpoint(), agent.Addr(), influxURL, o.bucket, cfgPath, dir,
		influxURL, o.bucket, demoGrafanaCompose, dir)

	tick := time.NewTicker(max(o.printEvery, time.Second))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			cancel()
			wg.Wait()
			fmt.Fprintln(out, "shopfloor demo stopped")
			return nil
		case err := <-errs:
			cancel()
			wg.Wait()
			if err != nil {
				return err
			}
			return errors.New("a part of the demo stopped unexpectedly; see demo.log")
		case <-tick.C:
			r := agent.readiness()
			written := 0.0
			if mfs, err := agent.registry.Gather(); err == nil {
				for _, mf := range mfs {
					if mf.GetName() == "shopfloor_sink_samples_written_total" {
						for _, m := range mf.GetMetric() {
							written += m.GetCounter().GetValue()
						}
					}
				}
			}
			state := "ready"
			if !r.Ready {
				state = strings.Join(r.NotReady, "; ")
			}
			fmt.Fprintf(out, "%s  %.0f samples written, %d queued  %s\n", time.Now().Format("15:04:05"), written, r.QueuedSamples, state)
		}
	}
}

// startInfluxd runs an InfluxDB 1.8 with its data in dir, on addr when
// that is free, else on a free port.
func startInfluxd(ctx context.Context, bin, dir, addr string, log io.Writer) (string, int, func(), error) {
	port, err := freePort(addr)
	if err != nil {
		return "", 0, nil, err
	}
	rpc, err := freePort("127.0.0.1:0")
	if err != nil {
		return "", 0, nil, err
	}
	conf := fmt.Sprintf(`reporting-disabled = true
bind-address = "127.0.0.1:%d"
[meta]
  dir = %q
[data]
  dir = %q
  wal-dir = %q
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:%d"
  log-enabled = false
[monitor]
  store-enabled = false
`, rpc, filepath.Join(dir, "meta"), filepath.Join(dir, "data"), filepath.Join(dir, "wal"), port)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", 0, nil, err
	}
	confPath := filepath.Join(dir, "influxdb.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o640); err != nil {
		return "", 0, nil, err
	}
	cmd := exec.Command(bin, "-config", confPath)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return "", 0, nil, fmt.Errorf("start influxd %s: %w", bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	u := "http://127.0.0.1:" + strconv.Itoa(port)
	for deadline := time.Now().Add(60 * time.Second); ; {
		resp, err := http.Get(u + "/ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return u, cmd.Process.Pid, stop, nil
			}
		}
		select {
		case <-done:
			return "", 0, nil, fmt.Errorf("influxd exited at start; see demo.log")
		case <-ctx.Done():
			stop()
			return "", 0, nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return "", 0, nil, errors.New("influxd did not answer within 60 s; see demo.log")
		}
	}
}

func createDatabase(influxURL, db string) error {
	name, _, _ := strings.Cut(db, "/")
	resp, err := http.PostForm(influxURL+"/query", url.Values{"q": {fmt.Sprintf("CREATE DATABASE %q", name)}})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// freePort returns the port of want when it is free, else any free port.
func freePort(want string) (int, error) {
	l, err := net.Listen("tcp", want)
	if err != nil {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startBroker runs an embedded MQTT broker on addr, or on a free port
// when addr is taken.
func startBroker(addr string, logger *slog.Logger) (*mochi.Server, string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("--mqtt %q: %w", addr, err)
	}
	port, err := freePort(addr)
	if err != nil {
		return nil, "", err
	}
	addr = net.JoinHostPort(host, strconv.Itoa(port))
	s := mochi.New(&mochi.Options{InlineClient: false, Logger: logger.With("component", "broker")})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, "", err
	}
	if err := s.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})); err != nil {
		return nil, "", fmt.Errorf("MQTT broker on %s: %w", addr, err)
	}
	go func() { _ = s.Serve() }()
	return s, addr, nil
}
