package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/noordoostpolder/shopfloor/adapters/influxdb"
	"github.com/noordoostpolder/shopfloor/collector"
)

// loadOptions are the flags of `shopfloor loadtest`.
type loadOptions struct {
	machines, messages, qos, conns int
	mosquitto, influxd             string
	unbounded, ceilings, backlog   bool
	other                          string
	stall                          time.Duration
	cpuProfile                     string
	agentConns                     int
	payload                        string  // "json" or "sparkplug"
	keep                           bool    // keep dir: the logs and data of every process
	rate                           float64 // messages per second in all; 0 is full speed
	dir                            string
}

// loadResult is one measured path.
type loadResult struct {
	Path        string
	Messages    int
	Stored      int
	Seconds     float64
	PerSecond   float64
	CPUPer100k  float64 // CPU seconds per 100,000 points, -1 when not measured
	PeakRSSMiB  float64
	P50, P99    float64 // seconds, -1 when not measured
	Loss        int
	Description string
	// Cores is how many of the machine's cores were busy on average
	// during the run (all processes); Broker, Influx and Harness how
	// many Mosquitto, InfluxDB and this process (publisher, subscriber,
	// polling) used. A run that keeps the machine busy is bounded by
	// CPU, not by a queue, and these say who has it.
	Cores, Broker, Influx, Harness float64
}

// busySeconds is the CPU time all processes have used since boot, from
// /proc/stat (user, nice, system, irq, softirq, steal); -1 off Linux.
func busySeconds() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return -1
	}
	var busy float64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseFloat(f[i], 64)
		busy += v
	}
	return busy / 100 // USER_HZ
}

// measureCPU measures the machine's, the broker's, InfluxDB's and this
// process's CPU from now to done().
func measureCPU(env *loadEnv) (done func(r *loadResult)) {
	influx := func() float64 {
		if env.stopInflux == nil {
			return 0 // down (a backlog run) or stopped
		}
		return cpuSecondsOf(env.influxPid)
	}
	m0, b0, i0, h0, t0 := busySeconds(), env.broker.cpuSeconds(), influx(), selfCPUSeconds(), time.Now()
	return func(r *loadResult) {
		wall := time.Since(t0).Seconds()
		r.Cores, r.Broker = (busySeconds()-m0)/wall, (env.broker.cpuSeconds()-b0)/wall
		r.Influx, r.Harness = (influx()-i0)/wall, (selfCPUSeconds()-h0)/wall
	}
}

// selfCPUSeconds is the CPU time this process has used.
func selfCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// The agent's MQTT connections when --agent-connections is not given.
// At QoS 1 each connection has its own broker queue (Mosquitto: 1000
// messages): with 8, about one 1M-message run in ten lost a few thousand
// when the agent stalled; 16 doubles that margin at about the same CPU.
const (
	defaultConnsQoS0 = 1
	defaultConnsQoS1 = 16
)

func runLoadtest(args []string, stdout, stderr io.Writer) int {
	var o loadOptions
	fs := flag.NewFlagSet("shopfloor loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.machines, "machines", 100, "machines publishing")
	fs.IntVar(&o.messages, "messages", 200000, "messages in all; one message is one point")
	fs.IntVar(&o.qos, "qos", 1, "MQTT QoS of publisher and agent, 0 or 1")
	fs.IntVar(&o.conns, "connections", 4, "publisher connections")
	fs.StringVar(&o.payload, "payload", "json", "what the machines publish: json, or sparkplug (Sparkplug B births and DDATA through the agent's sparkplug source)")
	fs.IntVar(&o.agentConns, "agent-connections", 0, "the agent's MQTT connections (sources[].mqtt.connections); default 1 at QoS 0, 16 at QoS 1")
	fs.StringVar(&o.mosquitto, "mosquitto", os.Getenv("SHOPFLOOR_MOSQUITTO"), "the mosquitto `binary` (default $SHOPFLOOR_MOSQUITTO or PATH)")
	fs.StringVar(&o.influxd, "influxd", os.Getenv("SHOPFLOOR_INFLUXD"), "the influxd 1.8 `binary` (default $SHOPFLOOR_INFLUXD or PATH)")
	fs.BoolVar(&o.unbounded, "unbounded-broker", false, "lift Mosquitto's queue limits (default: its defaults, as a real broker has them)")
	fs.BoolVar(&o.ceilings, "ceilings", true, "also measure the broker-only and InfluxDB-only ceilings")
	fs.BoolVar(&o.backlog, "backlog", false, "keep InfluxDB down while publishing, then measure the drain (queue memory test)")
	fs.StringVar(&o.other, "other", "", "also run this collector `command` (with MQTT_URL, INFLUX_URL, INFLUX_BUCKET, QOS in its environment) on the same load")
	fs.DurationVar(&o.stall, "stall", 30*time.Second, "give up when no point arrives for this long")
	fs.Float64Var(&o.rate, "rate", 0, "publish this many messages per second in all (0: as fast as the broker takes them)")
	fs.BoolVar(&o.keep, "keep", false, "keep the working directory (each process's log and data) and say where it is")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the agent's CPU profile of the first 10 s under load to this `file` (go tool pprof reads it)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if o.agentConns == 0 {
		// What the README advises: at QoS 0 one connection reads the most
		// per system call; at QoS 1 the broker's 20 unacknowledged
		// messages per connection cap what one takes, from 4 the source
		// also batches QoS 1 messages (see adapters/mqtt), and 8 hold the
		// first second of a full-speed publisher, while the agent warms
		// up, where 4 lost a few dozen messages in 3 of 5 200k runs.
		o.agentConns = map[int]int{0: defaultConnsQoS0, 1: defaultConnsQoS1}[o.qos]
	}
	if o.payload != "json" && o.payload != "sparkplug" {
		fmt.Fprintf(stderr, "shopfloor loadtest: --payload %q: want json or sparkplug\n", o.payload)
		return exitUsage
	}
	if o.payload == "sparkplug" {
		// Sparkplug B 3.0 publishes births and data at QoS 0.
		qosSet := false
		fs.Visit(func(f *flag.Flag) { qosSet = qosSet || f.Name == "qos" })
		if qosSet && o.qos != 0 {
			fmt.Fprintln(stderr, "shopfloor loadtest: Sparkplug B edge nodes publish NBIRTH, DBIRTH and DDATA at QoS 0; leave out --qos or give --qos 0")
			return exitUsage
		}
		o.qos = 0
	}
	if o.qos != 0 && o.qos != 1 || o.machines < 1 || o.messages < o.machines || o.conns < 1 || o.agentConns < 1 || o.rate < 0 {
		fmt.Fprintln(stderr, "shopfloor loadtest: need --qos 0 or 1, --machines >= 1, --messages >= machines, --connections >= 1, --agent-connections >= 1")
		return exitUsage
	}
	for _, b := range []*string{&o.mosquitto, &o.influxd} {
		if *b == "" {
			name := map[*string]string{&o.mosquitto: "mosquitto", &o.influxd: "influxd"}[b]
			p, err := exec.LookPath(name)
			if err != nil {
				p, err = exec.LookPath("/usr/sbin/" + name)
			}
			if err != nil {
				fmt.Fprintf(stderr, "shopfloor loadtest: no %s found; run it through `make loadtest`, which installs it\n", name)
				return exitUsage
			}
			*b = p
		}
	}
	dir, err := os.MkdirTemp("", "shopfloor-loadtest-")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailed
	}
	if o.keep {
		fmt.Fprintf(stderr, "shopfloor loadtest: logs and data stay in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	o.dir = dir
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	results, err := loadtest(ctx, o, stderr)
	printLoadResults(stdout, o, results)
	if err != nil {
		fmt.Fprintf(stderr, "shopfloor loadtest: %v\n", err)
		return exitFailed
	}
	return exitOK
}

func printLoadResults(w io.Writer, o loadOptions, rs []loadResult) {
	speed := "full speed"
	if o.rate > 0 {
		speed = fmt.Sprintf("%.0f messages/s", o.rate)
	}
	fmt.Fprintf(w, "\n%d machines, %d %s messages at %s, QoS %d, broker queue limits %s, agent MQTT connections %d\n", o.machines, o.messages, o.payload, speed, o.qos,
		map[bool]string{true: "lifted", false: "Mosquitto defaults"}[o.unbounded], o.agentConns)
	fmt.Fprintf(w, "%-34s %10s %10s %12s %9s %8s %8s %8s %6s %7s %7s %8s\n", "path", "stored", "per s", "CPU s/100k", "RSS MiB", "p50 s", "p99 s", "loss", "cores", "broker", "influx", "harness")
	f := func(v float64, prec int) string {
		if v < 0 {
			return "-"
		}
		return strconv.FormatFloat(v, 'f', prec, 64)
	}
	for _, r := range rs {
		fmt.Fprintf(w, "%-34s %10d %10.0f %12s %9s %8s %8s %8d %6s %7s %7s %8s\n", r.Path, r.Stored, r.PerSecond, f(r.CPUPer100k, 2), f(r.PeakRSSMiB, 1), f(r.P50, 3), f(r.P99, 3), r.Loss, f(r.Cores, 2), f(r.Broker, 2), f(r.Influx, 2), f(r.Harness, 2))
	}
}

// loadtest measures the ceilings and the agent (and another collector)
// on the same load, each against a fresh broker and database.
func loadtest(ctx context.Context, o loadOptions, progress io.Writer) ([]loadResult, error) {
	var out []loadResult
	if o.ceilings {
		r, err := brokerCeiling(ctx, o, progress)
		if err != nil {
			return out, fmt.Errorf("broker ceiling: %w", err)
		}
		out = append(out, r)
		for _, conns := range []int{1, 2} {
			r, err := influxCeiling(ctx, o, conns, progress)
			if err != nil {
				return out, fmt.Errorf("InfluxDB ceiling: %w", err)
			}
			out = append(out, r)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return out, err
	}
	r, err := collectorRun(ctx, o, "shopfloor agent", []string{self, "agent", "--config", "{config}"}, progress)
	out = append(out, r)
	if err != nil {
		return out, err
	}
	if o.other != "" {
		r, err := collectorRun(ctx, o, "other: "+o.other, strings.Fields(o.other), progress)
		out = append(out, r)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// proc is a child service of the load test.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(name string, args []string, env []string, log string) (*proc, error) {
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// cpuSeconds and peakRSS read the child's /proc entries (Linux).
func (p *proc) cpuSeconds() float64 { return cpuSecondsOf(p.cmd.Process.Pid) }

// cpuSecondsOf is the CPU time process pid has used, -1 when unknown.
func cpuSecondsOf(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

func (p *proc) peakRSSMiB() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	return -1
}

func waitHTTP(ctx context.Context, u string, ok func(int) bool) error {
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); {
		if resp, err := http.Get(u); err == nil {
			resp.Body.Close()
			if ok(resp.StatusCode) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not answer within 60 s", u)
}

// loadEnv is a fresh Mosquitto and InfluxDB for one measurement.
type loadEnv struct {
	dir, mqttURL, influxURL string
	influxAddr              string
	influxPid               int
	broker                  *proc
	stopInflux              func()
	o                       loadOptions
}

func newLoadEnv(ctx context.Context, o loadOptions, sub string) (*loadEnv, error) {
	e := &loadEnv{dir: filepath.Join(o.dir, sub), o: o}
	if err := os.MkdirAll(e.dir, 0o750); err != nil {
		return nil, err
	}
	mport, err := freePort("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("user root\nlistener %d 127.0.0.1\nallow_anonymous true\n", mport)
	if o.unbounded {
		conf += "max_queued_messages 0\nmax_inflight_messages 0\n"
	}
	if err := os.WriteFile(filepath.Join(e.dir, "mosquitto.conf"), []byte(conf), 0o640); err != nil {
		return nil, err
	}
	if e.broker, err = startProc(o.mosquitto, []string{"-c", filepath.Join(e.dir, "mosquitto.conf")}, os.Environ(), filepath.Join(e.dir, "mosquitto.log")); err != nil {
		return nil, err
	}
	e.mqttURL = "tcp://127.0.0.1:" + strconv.Itoa(mport)
	iport, err := freePort("127.0.0.1:0")
	if err != nil {
		e.close()
		return nil, err
	}
	e.influxAddr = "127.0.0.1:" + strconv.Itoa(iport)
	if err := e.influxUp(ctx); err != nil {
		e.close()
		return nil, err
	}
	_ = createDatabase(e.influxURL, "loadtest")
	settle(ctx)
	return e, nil
}

// settle waits, up to 10 s, until the machine is quiet: the data the last
// run wrote is on disk and the services just started have done their
// start-up work. Otherwise a run pays for the one before it (a 200k run
// after the ceilings measured 62,000 points/s instead of 90,000-99,000).
func settle(ctx context.Context) {
	syscall.Sync()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		before := busySeconds()
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
		if before < 0 || (busySeconds()-before)/0.25 < 0.2 {
			return
		}
	}
}

// influxUp starts (or restarts, on the same data and port) InfluxDB.
func (e *loadEnv) influxUp(ctx context.Context) error {
	u, pid, stop, err := startInfluxd(ctx, e.o.influxd, filepath.Join(e.dir, "influxdb"), e.influxAddr, io.Discard)
	if err != nil {
		return err
	}
	e.influxURL, e.influxPid, e.stopInflux = u, pid, stop
	return nil
}

func (e *loadEnv) influxDown() {
	if e.stopInflux != nil {
		e.stopInflux()
		e.stopInflux = nil
	}
}

func (e *loadEnv) close() {
	e.influxDown()
	if e.broker != nil {
		e.broker.stop()
	}
}

// loadFields is how many fields (samples) one load message carries.
const loadFields = 6

// topicFilter is what a subscriber of the whole load subscribes to.
func (o loadOptions) topicFilter() string {
	if o.payload == "sparkplug" {
		return "spBv1.0/#"
	}
	return "factory/#"
}

// message renders message i: 5 numbers and a string, one point.
func message(o loadOptions, i int, ts int64) (string, []byte) {
	m := i % o.machines
	topic := fmt.Sprintf("factory/line-%d/m-%03d/telemetry", m%10, m)
	return topic, fmt.Appendf(nil, `{"ts":%d,"spindle_speed":%d,"spindle_load":%d.5,"temperature":%d.25,"power_w":%d,"part_count":%d,"state":"running"}`,
		ts, 12000+i%1000, 40+i%20, 30+i%10, 5000+i%700, i/o.machines)
}

// publish sends o.messages at full speed over o.conns connections and
// returns when the broker acknowledged them (QoS 1) or they were written
// (QoS 0). Source timestamps are the publish time in milliseconds, moved
// on by one where a machine already has that millisecond (InfluxDB keeps
// one point per series and time), so latency is measured from the real
// publish.
//
// The Sparkplug load also answers the agent's rebirth requests (NCMD Node
// Control/Rebirth, which it sends after a gap in a node's sequence
// numbers) as an edge node does: with the node's NBIRTH and DBIRTHs.
// births counts the DBIRTHs, each of which is one point more.
func publish(ctx context.Context, o loadOptions, mqttURL string, sent, births *atomic.Int64) error {
	var wg sync.WaitGroup
	errs := make(chan error, o.conns)
	last := make([]atomic.Int64, o.machines) // per machine, its last timestamp
	var rebirth [sparkplugLines]atomic.Bool
	began := time.Now()
	if o.payload == "sparkplug" {
		stop, err := leanSubscribe(mqttURL, "spBv1.0/"+sparkplugGroup+"/NCMD/+", 0, func(topic []byte) {
			var n int
			if _, err := fmt.Sscanf(string(topic), "spBv1.0/"+sparkplugGroup+"/NCMD/line-%d", &n); err == nil && n >= 0 && n < sparkplugLines {
				rebirth[n].Store(true)
			}
		})
		if err != nil {
			return fmt.Errorf("rebirth listener: %w", err)
		}
		defer stop()
	}
	for c := 0; c < o.conns; c++ {
		pub, err := dialLeanPublisher(mqttURL, fmt.Sprintf("loadtest-pub-%d-%d", c, time.Now().UnixNano()), byte(o.qos), sent)
		if err != nil {
			return fmt.Errorf("publisher connect: %w", err)
		}
		wg.Go(func() {
			sparkplug := o.payload == "sparkplug"
			var seq [sparkplugLines]uint64 // per edge node, the next sequence number
			born := func(n int) error {
				ts := time.Now().UnixMilli()
				for m := n; m < o.machines; m += min(sparkplugLines, o.machines) {
					last[m].Store(max(last[m].Load(), ts)) // its data comes later than its birth
				}
				topics, payloads := sparkplugBirths(o, n, ts)
				for k := range topics {
					if err := pub.Publish(topics[k], payloads[k]); err != nil {
						return fmt.Errorf("publish a birth: %w", err)
					}
				}
				births.Add(int64(len(topics) - 1))
				seq[n] = uint64(len(topics) % 256)
				return nil
			}
			if sparkplug {
				for n := c; n < min(sparkplugLines, o.machines); n += o.conns {
					if err := born(n); err != nil {
						errs <- err
						_ = pub.Close()
						return
					}
				}
			}
			start, step := c, o.conns
			if sparkplug {
				start, step = 0, 1 // every message of a node through its one connection
			}
			for i := start; i < o.messages && ctx.Err() == nil; i += step {
				m := i % o.machines
				n := sparkplugNode(o, m)
				if sparkplug && n%o.conns != c {
					continue
				}
				if sparkplug && rebirth[n].Swap(false) {
					if err := born(n); err != nil {
						errs <- err
						_ = pub.Close()
						return
					}
				}
				if o.rate > 0 {
					// Message i is due i/rate after the start; a
					// connection ahead of that waits, in steps of at
					// least a millisecond so as not to sleep per message.
					if d := time.Until(began.Add(time.Duration(float64(i) / o.rate * float64(time.Second)))); d > time.Millisecond {
						time.Sleep(d)
					}
				}
				var ts int64
				for {
					prev := last[m].Load()
					if ts = max(time.Now().UnixMilli(), prev+1); last[m].CompareAndSwap(prev, ts) {
						break
					}
				}
				var topic string
				var payload []byte
				if sparkplug {
					topic, payload = sparkplugData(o, i, ts, seq[n])
					seq[n] = (seq[n] + 1) % 256
				} else {
					topic, payload = message(o, i, ts)
				}
				if err := pub.Publish(topic, payload); err != nil {
					errs <- fmt.Errorf("publish: %w", err)
					_ = pub.Close()
					return
				}
			}
			if err := pub.Close(); err != nil {
				errs <- fmt.Errorf("publish: %w", err)
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// brokerCeiling: publisher to Mosquitto to one subscriber, no database.
func brokerCeiling(ctx context.Context, o loadOptions, progress io.Writer) (loadResult, error) {
	r := loadResult{Path: "ceiling: broker only", Messages: o.messages, CPUPer100k: -1, PeakRSSMiB: -1, P50: -1, P99: -1}
	// A ceiling is the capacity of the set-up: the broker's queue limits
	// are lifted, or a subscriber slower than the publisher would measure
	// Mosquitto's drop policy instead.
	lifted := o
	lifted.unbounded = true
	env, err := newLoadEnv(ctx, lifted, "broker")
	if err != nil {
		return r, err
	}
	defer env.close()
	mqttURL := env.mqttURL
	var got atomic.Int64
	stopSub, err := leanSubscribe(mqttURL, o.topicFilter(), byte(o.qos), func([]byte) { got.Add(1) })
	if err != nil {
		return r, err
	}
	defer stopSub()
	var sent atomic.Int64
	start := time.Now()
	measured := measureCPU(env)
	var births atomic.Int64
	if err := publish(ctx, o, mqttURL, &sent, &births); err != nil {
		return r, err
	}
	last, lastChange := int64(-1), time.Now()
	// Every message, and with Sparkplug the births: a DBIRTH per machine
	// (counted) and an NBIRTH per node.
	deliveries := func() int {
		if births.Load() == 0 {
			return o.messages
		}
		return o.messages + int(births.Load()) + min(sparkplugLines, o.machines)
	}
	for got.Load() < int64(deliveries()) && time.Since(lastChange) < 5*time.Second {
		if n := got.Load(); n != last {
			last, lastChange = n, time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.Stored = int(got.Load())
	r.Seconds = lastChange.Sub(start).Seconds()
	r.PerSecond = float64(r.Stored) / r.Seconds
	r.Loss = deliveries() - r.Stored
	measured(&r)
	fmt.Fprintf(progress, "ceiling broker only: %d of %d in %.1f s\n", r.Stored, deliveries(), r.Seconds)
	return r, nil
}

// influxCeiling: the same points as line protocol posted straight to
// InfluxDB over conns connections.
func influxCeiling(ctx context.Context, o loadOptions, conns int, progress io.Writer) (loadResult, error) {
	r := loadResult{Path: fmt.Sprintf("ceiling: InfluxDB only, %d conn", conns), Messages: o.messages, CPUPer100k: -1, PeakRSSMiB: -1, P50: -1, P99: -1}
	env, err := newLoadEnv(ctx, o, fmt.Sprintf("influx%d", conns))
	if err != nil {
		return r, err
	}
	defer env.close()
	influxURL := env.influxURL
	base := time.Now()
	var bodies [][]byte
	var batch []collector.Sample
	for i := 0; i < o.messages; i++ {
		m := i % o.machines
		ts := base.Add(time.Duration(i/o.machines) * time.Millisecond)
		a := collector.Asset{Site: "plant", Line: fmt.Sprintf("line-%d", m%10), Machine: fmt.Sprintf("m-%03d", m)}
		for k, f := range []string{"spindle_speed_rpm", "spindle_load_pct", "temperature_c", "power_w", "part_count_good"} {
			batch = append(batch, collector.Sample{Asset: a, MachineType: "cnc", Signal: f, Value: collector.Float(float64(i + k)), SourceTime: ts})
		}
		batch = append(batch, collector.Sample{Asset: a, MachineType: "cnc", Signal: "state", Value: collector.String("running"), SourceTime: ts})
		if (i+1)%5000 == 0 || i == o.messages-1 {
			body, _, err := influxdb.AppendLines(nil, "machine", batch)
			if err != nil {
				return r, err
			}
			bodies = append(bodies, body)
			batch = batch[:0]
		}
	}
	start := time.Now()
	measured := measureCPU(env)
	var wg sync.WaitGroup
	var failed atomic.Int64
	next := atomic.Int64{}
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(bodies) || ctx.Err() != nil {
					return
				}
				resp, err := http.Post(influxURL+"/api/v2/write?bucket=loadtest&precision=ns", "text/plain", bytes.NewReader(bodies[i]))
				if err != nil || resp.StatusCode/100 != 2 {
					failed.Add(1)
				}
				if resp != nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	measured(&r)
	r.Seconds = time.Since(start).Seconds()
	r.Stored = o.messages
	if failed.Load() > 0 {
		return r, fmt.Errorf("%d write requests failed", failed.Load())
	}
	r.PerSecond = float64(o.messages) / r.Seconds
	fmt.Fprintf(progress, "ceiling InfluxDB only (%d connection(s)): %d points in %.1f s\n", conns, o.messages, r.Seconds)
	return r, nil
}

// loadAgentConfig is the agent's config for the load: the JSON form read
// by an mqtt source, or the Sparkplug form by a sparkplug host (edge node
// = line, device = machine); the same mapping and sink for both.
func loadAgentConfig(payload string) string {
	source := `    mqtt:
      url: ${MQTT_URL}
      client_id: shopfloor-loadtest
      connections: ${AGENT_CONNECTIONS}
      subscriptions:
        - topic: factory/+/+/telemetry
          qos: ${QOS}
          json: {time_field: ts, time_format: unix_ms}
    asset:
      site: plant
      machine_type: cnc
      from_origin: ["factory/{line}/{machine}/telemetry"]
`
	if payload == "sparkplug" {
		source = `    sparkplug:
      url: ${MQTT_URL}
      host_id: shopfloor-loadtest
    asset:
      site: plant
      machine_type: cnc
      from_origin: ["{area}/{line}/{machine}"]
`
	}
	return `agent:
  data_dir: ${SHOPFLOOR_DATA_DIR}
  http: {listen: "${SHOPFLOOR_HTTP}", pprof: true}
  log: {level: warn}
sources:
  - name: load
` + source + `    mapping:
      - {match: spindle_speed, signal: spindle_speed_rpm}
      - {match: spindle_load, signal: spindle_load_pct}
      - {match: part_count, signal: part_count_good}
      - {match: temperature, signal: temperature_c}
sink:
  influxdb:
    url: ${INFLUX_URL}
    bucket: ${INFLUX_BUCKET}
`
}

// collectorRun drives the load through a collector process into InfluxDB.
// In args, "{config}" is replaced by the agent config's path.
func collectorRun(ctx context.Context, o loadOptions, name string, args []string, progress io.Writer) (loadResult, error) {
	r := loadResult{Path: name, Messages: o.messages, P50: -1, P99: -1}
	sub := "collector-" + strconv.Itoa(len(name))
	env, err := newLoadEnv(ctx, o, sub)
	if err != nil {
		return r, err
	}
	defer env.close()
	mqttURL, influxURL, dir := env.mqttURL, env.influxURL, env.dir
	cfgPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(loadAgentConfig(o.payload)), 0o640); err != nil {
		return r, err
	}
	httpPort, _ := freePort("127.0.0.1:0")
	httpURL := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	procEnv := append(os.Environ(), "AGENT_CONNECTIONS="+strconv.Itoa(o.agentConns), "MQTT_URL="+mqttURL, "INFLUX_URL="+influxURL, "INFLUX_BUCKET=loadtest", "QOS="+strconv.Itoa(o.qos),
		"SHOPFLOOR_HTTP="+strings.TrimPrefix(httpURL, "http://"), "SHOPFLOOR_DATA_DIR="+filepath.Join(dir, "data"))
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "{config}", cfgPath)
	}
	p, err := startProc(args[0], args[1:], procEnv, filepath.Join(dir, "collector.log"))
	if err != nil {
		return r, err
	}
	defer p.stop()
	isAgent := strings.HasPrefix(name, "shopfloor")
	if isAgent {
		if err := waitHTTP(ctx, httpURL+"/readyz", func(c int) bool { return c == 200 }); err != nil {
			return r, fmt.Errorf("agent not ready: %w; see %s", err, filepath.Join(dir, "collector.log"))
		}
	} else {
		time.Sleep(3 * time.Second) // no common readiness signal
	}
	if o.backlog {
		env.influxDown()
	}
	cpu0 := p.cpuSeconds()
	measured := measureCPU(env)
	var sent atomic.Int64
	start := time.Now()
	pubDone := make(chan error, 1)
	var births atomic.Int64 // Sparkplug DBIRTHs: a point each
	points := func() int { return o.messages + int(births.Load()) }
	go func() { pubDone <- publish(ctx, o, mqttURL, &sent, &births) }()
	if isAgent && o.cpuProfile != "" {
		profDone := make(chan struct{})
		defer func() { <-profDone }()
		go func() {
			defer close(profDone)
			if err := fetchProfile(httpURL, o.cpuProfile, 10); err != nil {
				fmt.Fprintf(progress, "%s: cpu profile: %v\n", name, err)
			}
		}()
	}
	if o.backlog {
		if err := <-pubDone; err != nil {
			return r, err
		}
		fmt.Fprintf(progress, "%s: %d messages published while InfluxDB is down; waiting for them to be queued\n", name, o.messages)
		// Let the agent take everything into its queue, then bring the
		// database back with its data.
		// A record holds several messages, so the queue is counted in
		// samples; a queue that stops growing short of them (the broker
		// dropped some) ends the wait after --stall.
		lastQ, changed := -1.0, time.Now()
		for time.Since(changed) < o.stall {
			q := scrapeMetric(httpURL, "shopfloor_queue_samples")
			if q >= float64(points()*loadFields) {
				break
			}
			if q != lastQ {
				lastQ, changed = q, time.Now()
			}
			time.Sleep(time.Second)
		}
		r.Description = fmt.Sprintf("peak RSS with the backlog queued: %.1f MiB", p.peakRSSMiB())
		if err := env.influxUp(ctx); err != nil {
			return r, err
		}
		start = time.Now()
		cpu0 = p.cpuSeconds()
		measured = measureCPU(env)
		pubDone <- nil
	}
	// The agent's written-samples counter is read every 200 ms, more often
	// only as the end nears (see nextPoll), so the end of a run is known
	// to 10 ms; InfluxDB's own count (a scan, too slow to poll that often)
	// confirms it, and is the measure for another collector, to a second.
	stored, lastChange := 0, time.Now()
	poll := time.Second
	if isAgent {
		poll = 200 * time.Millisecond
	}
	tick := time.NewTimer(poll)
	defer tick.Stop()
	pubErr := error(nil)
	lastWritten, lastPrint := -1.0, time.Now()
	for stored < points() && time.Since(lastChange) < o.stall {
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case err := <-pubDone:
			pubErr = err
			pubDone = nil
			continue
		case <-tick.C:
			tick.Reset(nextPoll(poll, lastWritten, float64(points()*loadFields), time.Since(start)))
		}
		if isAgent {
			w := scrapeMetric(httpURL, "shopfloor_sink_samples_written_total")
			if w != lastWritten {
				lastWritten, lastChange = w, time.Now()
			}
			if w < float64(points()*loadFields) && time.Since(lastPrint) < time.Second {
				continue
			}
			end := lastChange
			if n := countPoints(influxURL); n != stored {
				stored = n
			}
			lastChange = end
		} else if n := countPoints(influxURL); n != stored {
			stored, lastChange = n, time.Now()
		}
		lastPrint = time.Now()
		fmt.Fprintf(progress, "%s: published %d/%d, stored %d, %.0f points/s\n", name, sent.Load(), o.messages, stored, float64(stored)/time.Since(start).Seconds())
	}
	if pubErr != nil {
		return r, pubErr
	}
	r.Stored = stored
	r.Seconds = lastChange.Sub(start).Seconds()
	r.PerSecond = float64(stored) / r.Seconds
	r.Loss = points() - stored
	r.CPUPer100k = (p.cpuSeconds() - cpu0) / float64(max(stored, 1)) * 100000
	r.PeakRSSMiB = p.peakRSSMiB()
	measured(&r)
	if isAgent {
		r.P50, r.P99 = latencyQuantiles(httpURL)
	}
	if r.Description != "" {
		fmt.Fprintln(progress, r.Description)
	}
	return r, nil
}

// fetchProfile saves the agent's CPU profile of the next seconds.
func fetchProfile(httpURL, path string, seconds int) error {
	resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", httpURL, seconds))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	return errors.Join(err, f.Close())
}

func countPoints(influxURL string) int {
	resp, err := http.PostForm(influxURL+"/query", url.Values{"db": {"loadtest"}, "q": {`SELECT count("power_w") FROM machine`}})
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var body struct {
		Results []struct {
			Series []struct {
				Values [][]any `json:"values"`
			} `json:"series"`
		} `json:"results"`
	}
	if json.NewDecoder(resp.Body).Decode(&body) != nil || len(body.Results) == 0 || len(body.Results[0].Series) == 0 {
		return 0
	}
	v, _ := body.Results[0].Series[0].Values[0][1].(float64)
	return int(v)
}

func scrapeMetric(httpURL, name string) float64 {
	resp, err := getMetrics(httpURL)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			f, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
			return f
		}
	}
	return -1
}

// nextPoll is when to read the agent's written counter next: half the
// time the rest should take at the rate so far, between 10 ms and every.
// A read of /metrics costs the agent about 1.5 ms of CPU, which it is
// charged for: reading every 10 ms throughout would add some 0.1 CPU s
// per 100k points, this adds a few reads at the end.
func nextPoll(every time.Duration, written, want float64, elapsed time.Duration) time.Duration {
	if written <= 0 || elapsed <= 0 {
		return every
	}
	rest := time.Duration((want - written) / written * float64(elapsed) / 2)
	return min(every, max(10*time.Millisecond, rest))
}

// getMetrics reads the agent's /metrics uncompressed: Go's client asks
// for gzip by default, and compressing every scrape cost the agent, who is
// charged for the CPU, more than producing it.
func getMetrics(httpURL string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, httpURL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept-Encoding", "identity")
	return http.DefaultClient.Do(req)
}

// latencyQuantiles estimates p50 and p99 from the agent's latency
// histogram, interpolating inside a bucket as Prometheus does.
func latencyQuantiles(httpURL string) (p50, p99 float64) {
	resp, err := getMetrics(httpURL)
	if err != nil {
		return -1, -1
	}
	defer resp.Body.Close()
	type bucket struct{ le, n float64 }
	var bs []bucket
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, "shopfloor_sink_sample_latency_seconds_bucket{") {
			continue
		}
		i := strings.Index(l, `le="`)
		j := strings.Index(l[i+4:], `"`)
		le, err := strconv.ParseFloat(l[i+4:i+4+j], 64)
		if err != nil {
			le = math.Inf(1)
		}
		n, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		bs = append(bs, bucket{le, n})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	if len(bs) == 0 || bs[len(bs)-1].n == 0 {
		return -1, -1
	}
	total := bs[len(bs)-1].n
	q := func(p float64) float64 {
		rank := p * total
		prevLe, prevN := 0.0, 0.0
		for _, b := range bs {
			if b.n >= rank {
				if math.IsInf(b.le, 1) {
					return prevLe
				}
				return prevLe + (b.le-prevLe)*(rank-prevN)/math.Max(b.n-prevN, 1)
			}
			prevLe, prevN = b.le, b.n
		}
		return prevLe
	}
	return q(0.5), q(0.99)
}
