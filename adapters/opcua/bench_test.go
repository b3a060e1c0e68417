package opcua

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// envBenchServer makes the test binary an in-process gopcua server for
// the throughput benchmark: "port,items". Running the server in its own
// process keeps its CPU and memory out of the agent's figures.
const envBenchServer = "SHOPFLOOR_OPCUA_BENCH_SERVER"

// childMains turn the test binary into something other than a test run
// when their environment variable is set (to the value passed on), so
// that a benchmark can put a server, or the agent, into a process of its
// own. Files with build tags add theirs in init.
var childMains = map[string]func(spec string){envBenchServer: benchServer}

func TestMain(m *testing.M) {
	for env, child := range childMains {
		if spec := os.Getenv(env); spec != "" {
			child(spec)
			return
		}
	}
	os.Exit(m.Run())
}

// benchServer serves Objects/Machines/m-<k>/v-<j>, 100 variables per
// machine, and changes every value every 100 ms until stdin closes.
func benchServer(spec string) {
	parts := strings.Split(spec, ",")
	port, _ := strconv.Atoi(parts[0])
	n, _ := strconv.Atoi(parts[1])
	srv := server.New(
		server.EndPoint("127.0.0.1", port),
		server.EnableSecurity("None", ua.MessageSecurityModeNone),
		server.EnableAuthMode(ua.UserTokenTypeAnonymous),
	)
	ns := server.NewNodeNameSpace(srv, "bench")
	root, _ := srv.Namespace(0)
	machines := ns.AddNode(folder(ua.NewStringNodeID(ns.ID(), "Machines"), "Machines"))
	root.Objects().AddRef(machines, id.Organizes, true)
	nodes := make([]*server.Node, n)
	var mf *server.Node
	for i := range nodes {
		if i%100 == 0 {
			name := fmt.Sprintf("m-%d", i/100)
			mf = ns.AddNode(folder(ua.NewStringNodeID(ns.ID(), name), name))
			machines.AddRef(mf, id.Organizes, true)
		}
		v := ns.AddNewVariableStringNode(fmt.Sprintf("v%d", i), float64(i))
		v.SetBrowseName(fmt.Sprintf("v-%d", i%100))
		mf.AddRef(v, id.HasComponent, true)
		nodes[i] = v
	}
	if err := srv.Start(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("READY")
	// The first line on stdin starts the updates (once the agent has
	// subscribed, see MaxItemsPerCall below), the end of stdin stops.
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		os.Exit(0)
	}
	go func() {
		_, _ = in.ReadString('\n')
		os.Exit(0)
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	for k := 0; ; k++ {
		<-tick.C
		now := time.Now()
		for i, v := range nodes {
			_ = v.SetAttribute(ua.AttributeIDValue, &ua.DataValue{
				EncodingMask: ua.DataValueValue | ua.DataValueSourceTimestamp,
				Value:        ua.MustVariant(float64(k*n + i)), SourceTimestamp: now,
			})
			ns.ChangeNotification(v.ID())
		}
	}
}

// countingOutput normalises and counts, standing in for the pipeline.
type countingOutput struct {
	norm    *collector.Normalizer
	samples atomic.Int64
	mu      sync.Mutex
	buf     []collector.Sample
}

func (o *countingOutput) Emit(_ context.Context, bs ...collector.Batch) error {
	o.mu.Lock()
	for _, b := range bs {
		o.buf, _ = o.norm.Normalize(b, o.buf[:0], nil)
		o.samples.Add(int64(len(o.buf)))
	}
	o.mu.Unlock()
	return nil
}
func (o *countingOutput) Bad(string, error)     {}
func (o *countingOutput) Connected(bool, error) {}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rssKB() int64 { return procStatusKB("VmRSS:") }

// procStatusKB reads one kB figure of /proc/self/status, such as
// "VmRSS:" (resident now) or "VmHWM:" (peak resident).
func procStatusKB(key string) int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == key {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// BenchmarkMonitoredItems100ms measures how many monitored items at a
// 100 ms sampling interval one agent keeps up with: every value changes
// every 100 ms on a gopcua server in another process, and the agent
// (source and normalisation; no sink) counts what arrives in one-second
// windows. Run it with
//
//	go test -run XXX -bench MonitoredItems -benchtime 5x ./adapters/opcua/
//
// delivered/expected near 1 means the agent keeps up; agent-cpu is cores
// used by the agent process. Beyond about 2500 items gopcua's server
// itself stalls: it sends every change of a publish in one response and
// cannot split a response into chunks. BenchmarkHandleDataChange gives
// the agent's own cost per change.
func BenchmarkMonitoredItems100ms(b *testing.B) {
	for _, n := range []int{1000, 2000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			port := collectortest.FreePort(b)
			exe, _ := os.Executable()
			cmd := exec.Command(exe)
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d", envBenchServer, port, n))
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { stdin.Close(); _ = cmd.Wait() }()
			if line, _ := bufio.NewReader(stdout).ReadString('\n'); !strings.HasPrefix(line, "READY") {
				b.Fatalf("bench server: %q", line)
			}
			cfg := Config{
				Endpoint:           fmt.Sprintf("opc.tcp://127.0.0.1:%d", port),
				PublishingInterval: 100 * time.Millisecond,
				SamplingInterval:   100 * time.Millisecond,
				RequestTimeout:     30 * time.Second,
				WatchdogInterval:   10 * time.Second,
				Nodes:              []Node{{Path: "Objects/Machines/*/*"}},
			}
			s, err := New(cfg, b.TempDir(), testLogger())
			if err != nil {
				b.Fatal(err)
			}
			norm, _ := collector.NewNormalizer(collector.NormalizeConfig{Asset: collector.AssetRule{FromOrigin: []string{"Objects/Machines/{machine}"}}})
			out := &countingOutput{norm: norm}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx, out) }()
			defer func() { cancel(); <-done }()
			// Wait until every item delivered its first value.
			deadline := time.Now().Add(30 * time.Second)
			for out.samples.Load() < int64(n) {
				if time.Now().After(deadline) {
					b.Fatalf("only %d of %d items delivered a first value", out.samples.Load(), n)
				}
				time.Sleep(50 * time.Millisecond)
			}
			// gopcua's server handles a session's requests one at a
			// time and its value updates block on a full notification
			// queue, so monitored items created while values change can
			// wait forever: start the changes once all items exist.
			if _, err := stdin.Write([]byte("go\n")); err != nil {
				b.Fatal(err)
			}
			time.Sleep(2 * time.Second)
			b.ResetTimer()
			var got int64
			var cpu, wall time.Duration
			for i := 0; i < b.N; i++ {
				c0, s0, t0 := cpuTime(), out.samples.Load(), time.Now()
				time.Sleep(time.Second)
				cpu += cpuTime() - c0
				wall += time.Since(t0)
				got += out.samples.Load() - s0
			}
			b.StopTimer()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			expected := float64(n) * 10 * wall.Seconds()
			b.ReportMetric(float64(got)/wall.Seconds(), "samples/s")
			b.ReportMetric(float64(got)/expected, "delivered/expected")
			b.ReportMetric(cpu.Seconds()/wall.Seconds(), "agent-cpu")
			b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
			b.ReportMetric(float64(rssKB())/1024, "rss-MiB")
		})
	}
}

// BenchmarkHandleDataChange measures the agent's own cost per data
// change, without any server: one op is one publish of 1000 Double
// changes over 10 machines, converted, grouped and normalised.
func BenchmarkHandleDataChange(b *testing.B) {
	const n = 1000
	norm, _ := collector.NewNormalizer(collector.NormalizeConfig{Asset: collector.AssetRule{FromOrigin: []string{"Objects/Machines/{machine}"}}})
	out := &countingOutput{norm: norm}
	r := &run{s: &Source{cfg: Config{Endpoint: "opc.tcp://bench:4840"}, log: slog.New(slog.DiscardHandler), bad: map[string]BadNode{}}, out: out}
	node := &Node{}
	dc := &ua.DataChangeNotification{}
	now := time.Now()
	for i := 0; i < n; i++ {
		r.items = append(r.items, &item{key: fmt.Sprint(i), name: fmt.Sprintf("v-%d", i%100), origin: fmt.Sprintf("Objects/Machines/m-%d", i/100), cfg: node})
		dc.MonitoredItems = append(dc.MonitoredItems, &ua.MonitoredItemNotification{ClientHandle: uint32(i), Value: &ua.DataValue{
			EncodingMask: ua.DataValueValue | ua.DataValueSourceTimestamp, Value: ua.MustVariant(float64(i)), SourceTimestamp: now,
		}})
	}
	pn := &opcua.PublishNotificationData{Value: dc}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := r.handle(ctx, pn); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/change")
}
