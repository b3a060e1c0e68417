package opcua

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func newTestSource(t testing.TB, cfg Config, dataDir string) *Source {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	s, err := New(cfg, dataDir, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// supervise calls Run again after it returns, like the pipeline's
// supervisor, until the test ends.
func supervise(t testing.TB, s *Source, out collector.Output) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := s.Run(ctx, out); err != nil {
				t.Logf("Run: %v", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	stop := func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return stop
}

// latest returns the newest sample per origin|signal.
func latest(out *collectortest.Output) map[string]collector.Sample {
	m := map[string]collector.Sample{}
	for _, b := range out.Batches() {
		for _, s := range b.Samples {
			m[b.Origin+"|"+s.Signal] = s
		}
	}
	return m
}

func waitFor(t testing.TB, out *collectortest.Output, key string, ok func(collector.Sample) bool) collector.Sample {
	t.Helper()
	var got collector.Sample
	collectortest.Eventually(t, 10*time.Second, func() error {
		s, found := latest(out)[key]
		if !found {
			return fmt.Errorf("no sample %s yet; have %d batches", key, len(out.Batches()))
		}
		if ok != nil && !ok(s) {
			return fmt.Errorf("sample %s is %v (%s), not yet what we wait for", key, s.Value.Format(), s.Quality)
		}
		got = s
		return nil
	})
	return got
}

func TestSourceBrowsePathsAndTypes(t *testing.T) {
	ts := startTestServer(t, defaultMachines())
	cfg := Config{
		Endpoint:           ts.endpoint(),
		PublishingInterval: 50 * time.Millisecond,
		Nodes:              []Node{{Path: "Objects/Machines/*/*"}},
	}
	s := newTestSource(t, cfg, "")
	out := &collectortest.Output{}
	supervise(t, s, out)

	const cnc = "Objects/Machines/cnc-01"
	want := map[string]collector.Value{
		cnc + "|SpindleSpeed":                      collector.Float(12000),
		cnc + "|SpindleLoad":                       collector.Float(41.5),
		cnc + "|PartCountGood":                     collector.Int(1834),
		cnc + "|PartCountReject":                   collector.Int(3),
		cnc + "|ProgramName":                       collector.String("O1234"),
		cnc + "|Running":                           collector.Bool(true),
		cnc + "|State":                             collector.Int(1),
		"Objects/Machines/robot-01|JointTorques_1": collector.Float(1),
		"Objects/Machines/robot-01|JointTorques_6": collector.Float(6),
		"Objects/Machines/robot-01|CycleCount":     collector.Int(42),
	}
	for key, v := range want {
		got := waitFor(t, out, key, nil)
		if got.Value != v || got.Quality != collector.QualityGood {
			t.Errorf("%s = %v %s (%s), want %v good", key, got.Value.Format(), got.Value.Kind(), got.Quality, v.Format())
		}
		if got.SourceTime.IsZero() || got.ReceiveTime.IsZero() {
			t.Errorf("%s: times not set: %+v", key, got)
		}
	}

	// A Bad value is written as Bad, never as a repeat of the last good.
	ts.set("cnc-01/SpindleSpeed", float64(0), ua.StatusBadDeviceFailure)
	got := waitFor(t, out, cnc+"|SpindleSpeed", func(s collector.Sample) bool { return s.Quality == collector.QualityBad })
	if got.Value.Kind() != collector.KindNone {
		t.Errorf("bad sample carries a value %v", got.Value.Format())
	}
	ts.set("cnc-01/SpindleSpeed", float64(9000), ua.StatusUncertainLastUsableValue)
	got = waitFor(t, out, cnc+"|SpindleSpeed", func(s collector.Sample) bool { return s.Quality == collector.QualityUncertain })
	if got.Value != collector.Float(9000) {
		t.Errorf("uncertain sample = %v, want 9000", got.Value.Format())
	}
}

func TestSourceBadNodeIsolated(t *testing.T) {
	ts := startTestServer(t, defaultMachines())
	ns := ts.ns.ID()
	cfg := Config{
		Endpoint:           ts.endpoint(),
		PublishingInterval: 50 * time.Millisecond,
		Nodes: []Node{
			{NodeID: fmt.Sprintf("ns=%d;s=cnc-01.SpindleSpeed", ns), Origin: "Objects/Machines/cnc-01"},
			{NodeID: fmt.Sprintf("ns=%d;s=does-not-exist", ns), Origin: "Objects/Machines/cnc-01"},
			{NodeID: fmt.Sprintf("ns=%d;s=cnc-01.ProgramName", ns), Origin: "Objects/Machines/cnc-01", Signal: "program"},
			{Path: "Objects/Machines/*/NoSuchVariable"},
		},
	}
	s := newTestSource(t, cfg, "")
	out := &collectortest.Output{}
	supervise(t, s, out)
	waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", nil)
	waitFor(t, out, "Objects/Machines/cnc-01|program", nil)
	ts.set("cnc-01/SpindleSpeed", float64(777), ua.StatusOK)
	waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", func(s collector.Sample) bool { return s.Value == collector.Float(777) })

	bad := s.BadNodes()
	if len(bad) != 2 {
		t.Fatalf("BadNodes = %+v, want the unknown id and the pattern that matches nothing", bad)
	}
	for _, b := range bad {
		if b.Reason != ReasonNodeUnknown {
			t.Errorf("%s: reason %s, want %s", b.Node, b.Reason, ReasonNodeUnknown)
		}
	}
	if n := out.BadCounts()[ReasonNodeUnknown]; n < 2 {
		t.Errorf("Bad(node_unknown) counted %d times, want at least 2", n)
	}
}

func TestSourceRestartResumesWithOneSubscription(t *testing.T) {
	ts := startTestServer(t, defaultMachines())
	cfg := Config{
		Endpoint:           ts.endpoint(),
		PublishingInterval: 50 * time.Millisecond,
		WatchdogInterval:   time.Second,
		RequestTimeout:     2 * time.Second,
		Nodes:              []Node{{Path: "Objects/Machines/*/SpindleSpeed"}},
	}
	s := newTestSource(t, cfg, "")
	out := &collectortest.Output{}
	supervise(t, s, out)
	key := "Objects/Machines/cnc-01|SpindleSpeed"
	ts.set("cnc-01/SpindleSpeed", float64(1), ua.StatusOK)
	waitFor(t, out, key, func(s collector.Sample) bool { return s.Value == collector.Float(1) })

	ts.restart()
	restarted := time.Now()
	// The new server starts with its initial value; then a change must
	// arrive through the restored subscription.
	collectortest.Eventually(t, 10*time.Second, func() error {
		if ts.subscriptions() == 0 {
			return fmt.Errorf("no subscription on the restarted server yet")
		}
		return nil
	})
	ts.set("cnc-01/SpindleSpeed", float64(2), ua.StatusOK)
	waitFor(t, out, key, func(s collector.Sample) bool { return s.Value == collector.Float(2) })
	if d := time.Since(restarted); d > 10*time.Second {
		t.Errorf("values resumed after %s, want within 10s", d)
	}
	if n := ts.subscriptions(); n != 1 {
		t.Errorf("server holds %d subscriptions after the restart, want exactly 1", n)
	}
	ups := 0
	for _, up := range out.ConnectedStates() {
		if up {
			ups++
		}
	}
	if ups < 2 {
		t.Errorf("connected %d times, want a reconnect", ups)
	}
}

func TestSourceShutdownDeletesSubscription(t *testing.T) {
	ts := startTestServer(t, defaultMachines())
	s := newTestSource(t, Config{Endpoint: ts.endpoint(), Nodes: []Node{{Path: "Objects/Machines/cnc-01/State"}}}, "")
	out := &collectortest.Output{}
	stop := supervise(t, s, out)
	waitFor(t, out, "Objects/Machines/cnc-01|State", nil)
	if n := ts.subscriptions(); n != 1 {
		t.Fatalf("%d subscriptions while running, want 1", n)
	}
	start := time.Now()
	stop()
	// On a link that answers, the goodbye is two round trips.
	if took := time.Since(start); took > time.Second {
		t.Errorf("shutdown took %s, want well under a second", took)
	}
	collectortest.Eventually(t, 5*time.Second, func() error {
		if n := ts.subscriptions(); n != 0 {
			return fmt.Errorf("%d subscriptions left after shutdown", n)
		}
		return nil
	})
}

func TestSourcePollMode(t *testing.T) {
	ts := startTestServer(t, defaultMachines())
	s := newTestSource(t, Config{
		Endpoint:     ts.endpoint(),
		Mode:         ModePoll,
		PollInterval: 50 * time.Millisecond,
		Nodes:        []Node{{Path: "Objects/Machines/robot-01/*"}},
	}, "")
	out := &collectortest.Output{}
	supervise(t, s, out)
	waitFor(t, out, "Objects/Machines/robot-01|TcpSpeed", nil)
	ts.set("robot-01/TcpSpeed", float64(99), ua.StatusOK)
	waitFor(t, out, "Objects/Machines/robot-01|TcpSpeed", func(s collector.Sample) bool { return s.Value == collector.Float(99) })
	if n := ts.subscriptions(); n != 0 {
		t.Errorf("poll mode created %d subscriptions", n)
	}
}

func TestApplicationCertificateSurvivesRestart(t *testing.T) {
	ts := startTestServer(t, defaultMachines())
	dir := t.TempDir()
	cfg := Config{Endpoint: ts.endpoint(), Nodes: []Node{{Path: "Objects/Machines/cnc-01/State"}}}
	s1 := newTestSource(t, cfg, dir)
	out := &collectortest.Output{}
	stop := supervise(t, s1, out)
	waitFor(t, out, "Objects/Machines/cnc-01|State", nil)
	stop()
	first, err := os.ReadFile(filepath.Join(dir, "opcua", "own", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key1, _ := os.ReadFile(filepath.Join(dir, "opcua", "own", "key.pem"))

	s2 := newTestSource(t, cfg, dir) // the agent restarted
	out2 := &collectortest.Output{}
	supervise(t, s2, out2)
	waitFor(t, out2, "Objects/Machines/cnc-01|State", nil)
	second, _ := os.ReadFile(filepath.Join(dir, "opcua", "own", "cert.pem"))
	key2, _ := os.ReadFile(filepath.Join(dir, "opcua", "own", "key.pem"))
	if !bytes.Equal(first, second) || !bytes.Equal(key1, key2) {
		t.Error("the application certificate changed across an agent restart")
	}
	for _, d := range []string{"own", "trusted", "rejected"} {
		if fi, err := os.Stat(filepath.Join(dir, "opcua", d)); err != nil || !fi.IsDir() {
			t.Errorf("pki folder %s missing: %v", d, err)
		}
	}
}

// superviseErrs is supervise that also returns what the Run calls
// returned other than nil.
func superviseErrs(t testing.TB, s *Source, out collector.Output) func() []error {
	t.Helper()
	var mu sync.Mutex
	var errs []error
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := s.Run(ctx, out); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return func() []error {
		mu.Lock()
		defer mu.Unlock()
		return append([]error(nil), errs...)
	}
}

// logRecorder keeps the messages a source logs, at every level.
type logRecorder struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	msgs []string
}

func (l *logRecorder) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{l}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type logWriter struct{ l *logRecorder }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	w.l.msgs = append(w.l.msgs, string(p))
	return w.l.buf.Write(p)
}

// count is how many log lines contain s.
func (l *logRecorder) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

func (l *logRecorder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestSourceServerWithoutHistoryRead: a variable says it is historizing,
// but the server has no HistoryRead at all and answers with a service
// fault (gopcua's server; a PLC whose history is switched off). After a
// gap the source asks once, logs it, connects again without reporting
// an outage, and neither asks again nor fails after the next gap; live
// values flow throughout. gopcua's server has no TransferSubscriptions
// either, which takes the same path.
func TestSourceServerWithoutHistoryRead(t *testing.T) {
	t.Parallel() // mostly waiting; runs beside the interop tests
	ts, p := startTestServerBehindProxy(t, defaultMachines(), "cnc-01/SpindleSpeed")
	logs := &logRecorder{}
	s, err := New(Config{
		Endpoint:           p.endpoint(),
		PublishingInterval: 50 * time.Millisecond,
		Nodes:              []Node{{Path: "Objects/Machines/cnc-01/SpindleSpeed"}},
	}, t.TempDir(), logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	out := &collectortest.Output{}
	runErrs := superviseErrs(t, s, out)
	key := "Objects/Machines/cnc-01|SpindleSpeed"
	for i := 1; i <= 3; i++ {
		ts.set("cnc-01/SpindleSpeed", float64(i), ua.StatusOK)
		waitFor(t, out, key, func(s collector.Sample) bool { return s.Value == collector.Float(float64(i)) })
		if i < 3 {
			// A gap: the source reconnects and, having emitted values
			// before, would back-fill.
			p.cut(200 * time.Millisecond)
		}
	}
	for _, refusal := range []string{"the server refuses HistoryRead", "the server does not take over subscriptions"} {
		if n := logs.count(refusal); n != 1 {
			t.Errorf("logged %q %d times, want once (asked once, then never again):\n%s", refusal, n, logs.String())
		}
	}
	for _, err := range runErrs() {
		if strings.Contains(err.Error(), "HistoryRead") || errors.Is(err, errRedial) {
			t.Errorf("Run failed over the missing HistoryRead: %v", err)
		}
	}
	// Every outage reported is a Run that failed over the cut network.
	// The redial after the HistoryRead refusal shows as one connection
	// following another without an outage between them; the one after
	// TransferSubscriptions comes before the source reports itself up.
	states, errs := out.ConnectedStates(), runErrs()
	downs, redials := 0, 0
	for i, up := range states {
		if !up {
			downs++
		} else if i > 0 && states[i-1] {
			redials++
		}
	}
	if downs != len(errs) || redials != 1 {
		t.Errorf("connection states %v: %d outages for %d failed Runs (%v) and %d redials, want as many outages as failed Runs and one redial", states, downs, len(errs), errs, redials)
	}
}

// TestSourceLostLinkEndsRunPromptly: when the link goes silent (the
// server keeps the TCP connection but nothing arrives), the watchdog
// notices within watchdog_interval + request_timeout, and Run returns
// then, without first waiting on the dead link to delete the
// subscription and close the session (which took another two request
// timeouts).
func TestSourceLostLinkEndsRunPromptly(t *testing.T) {
	_, p := startTestServerBehindProxy(t, defaultMachines())
	cfg := Config{
		Endpoint:           p.endpoint(),
		PublishingInterval: 50 * time.Millisecond,
		WatchdogInterval:   200 * time.Millisecond,
		RequestTimeout:     time.Second,
		Nodes:              []Node{{Path: "Objects/Machines/cnc-01/SpindleSpeed"}},
	}
	s := newTestSource(t, cfg, "")
	out := &collectortest.Output{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, out) }()
	waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", nil)
	p.silence(time.Minute)
	silenced := time.Now()
	select {
	case err := <-done:
		took := time.Since(silenced)
		if err == nil || !strings.Contains(err.Error(), "watchdog") {
			t.Errorf("Run = %v, want the watchdog's connection lost", err)
		}
		if bound := cfg.WatchdogInterval + cfg.RequestTimeout + 700*time.Millisecond; took > bound {
			t.Errorf("Run returned %s after the link went silent, want within %s", took, bound)
		}
		t.Logf("Run returned %s after the link went silent", took.Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not notice the silent link within 15s")
	}
}

// TestSourceShutdownPromptOnSilentLink: shutting down while the link is
// silent but not yet found dead, the goodbye (delete the subscription,
// close the session) gives up after closeTimeout in all, whatever the
// request_timeout.
func TestSourceShutdownPromptOnSilentLink(t *testing.T) {
	t.Parallel() // mostly waiting; runs beside the interop tests
	_, p := startTestServerBehindProxy(t, defaultMachines())
	s := newTestSource(t, Config{
		Endpoint:           p.endpoint(),
		PublishingInterval: 50 * time.Millisecond,
		Nodes:              []Node{{Path: "Objects/Machines/cnc-01/State"}},
	}, "")
	out := &collectortest.Output{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, out) }()
	waitFor(t, out, "Objects/Machines/cnc-01|State", nil)
	p.silence(time.Minute)
	cancel()
	start := time.Now()
	select {
	case err := <-done:
		took := time.Since(start)
		if err != nil {
			t.Errorf("Run = %v after cancel, want nil", err)
		}
		if took > closeTimeout+time.Second {
			t.Errorf("Run returned %s after cancel, want within closeTimeout %s", took, closeTimeout)
		}
		t.Logf("Run returned %s after cancel on a silent link (request_timeout %s)", took.Round(time.Millisecond), DefaultRequestTimeout)
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return within 15s after cancel")
	}
}

// TestSourceStartNode: a browse path starts at start_node, here the
// Objects folder (i=85); the batch origin is the path the pattern
// matched, from the start node, without the variable.
func TestSourceStartNode(t *testing.T) {
	ts := startTestServer(t, defaultMachines())
	s := newTestSource(t, Config{
		Endpoint:           ts.endpoint(),
		PublishingInterval: 50 * time.Millisecond,
		Nodes:              []Node{{Path: "Machines/*/TcpSpeed", StartNode: "i=85"}},
	}, "")
	out := &collectortest.Output{}
	supervise(t, s, out)
	if got := waitFor(t, out, "Machines/robot-01|TcpSpeed", nil); got.Value != collector.Float(250) {
		t.Errorf("TcpSpeed = %v, want 250", got.Value.Format())
	}
	if bad := s.BadNodes(); len(bad) != 0 {
		t.Errorf("BadNodes = %+v", bad)
	}
}
