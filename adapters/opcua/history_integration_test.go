//go:build integration

package opcua

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// counterSample is one value of hist-01/Counter as the source emitted it.
type counterSample struct {
	v  int64
	ts time.Time
}

func counterSamples(t *testing.T, out *timedOutput) []counterSample {
	t.Helper()
	var got []counterSample
	for _, b := range out.Batches() {
		for _, s := range b.Samples {
			if b.Origin != "Objects/Machines/hist-01" || s.Signal != "Counter" {
				continue
			}
			v, ok := s.Value.AsInt()
			if !ok || s.Quality != collector.QualityGood {
				t.Errorf("counter sample %+v is not a good integer", s)
				continue
			}
			got = append(got, counterSample{v, s.SourceTime})
		}
	}
	return got
}

// TestInteropBackfillAfterGap cuts the network between the source and a
// node-opcua server that keeps counting, for 5 s, and checks that the
// values counted meanwhile arrive after the reconnect, read from the
// server's history, each once with its own source time. Beside the
// counter, hist-01/NoHistory says it is historizing, but node-opcua
// keeps no history for it and answers its HistoryRead per node
// (BadHistoryOperationUnsupported): across this gap and a second one
// the source asks once, logs it once, and no Run fails for it.
func TestInteropBackfillAfterGap(t *testing.T) {
	t.Parallel()
	endpoint := startNodeServer(t, "--history")
	proxy := startProxy(t, strings.TrimPrefix(endpoint, "opc.tcp://"))
	logs := &logRecorder{}
	s, err := New(Config{
		Endpoint:           proxy.endpoint(),
		PublishingInterval: 100 * time.Millisecond,
		ConnectTimeout:     2 * time.Second,
		RequestTimeout:     2 * time.Second,
		WatchdogInterval:   time.Second,
		Nodes: []Node{
			// Fast sampling and a deep queue, so live values miss no
			// step either and the whole series can be checked.
			{Path: "Objects/Machines/hist-01/Counter", SamplingInterval: 50 * time.Millisecond, QueueSize: 100},
			{Path: "Objects/Machines/hist-01/NoHistory"},
		},
	}, t.TempDir(), logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	// Few values per HistoryRead, so the back-fill of a 5 s gap (about
	// 50 values) follows continuation points.
	s.historyPerRead = 7
	out := &timedOutput{Output: &collectortest.Output{}}
	runErrs := superviseErrs(t, s, out)

	// Live values flow.
	waitFor(t, out.Output, "Objects/Machines/hist-01|NoHistory", nil)
	collectortest.Eventually(t, 20*time.Second, func() error {
		if n := len(counterSamples(t, out)); n < 10 {
			return fmt.Errorf("%d counter values so far", n)
		}
		return nil
	})
	before := counterSamples(t, out)
	last := before[len(before)-1]
	proxy.cut(5 * time.Second)
	cutAt := time.Now()

	// After the gap the source reconnects; wait for live values newer
	// than the reconnection.
	var reconnected time.Time
	collectortest.Eventually(t, 20*time.Second, func() error {
		ups := out.upTimes()
		if len(ups) < 2 {
			return fmt.Errorf("not reconnected yet (%d connections)", len(ups))
		}
		reconnected = ups[len(ups)-1]
		got := counterSamples(t, out)
		if got[len(got)-1].ts.Before(reconnected.Add(300 * time.Millisecond)) {
			return fmt.Errorf("no live value after the reconnection at %s yet", reconnected.Format(time.StampMilli))
		}
		return nil
	})
	if gap := reconnected.Sub(cutAt); gap < 5*time.Second {
		t.Fatalf("reconnected %s after the cut, want at least the 5 s the proxy refused", gap)
	}
	checkCounter(t, counterSamples(t, out), last, cutAt, reconnected)

	// A second, short gap: NoHistory is not asked again, the counter is
	// back-filled again.
	n := len(out.upTimes())
	proxy.cut(time.Second)
	collectortest.Eventually(t, 15*time.Second, func() error {
		if len(out.upTimes()) <= n || logs.count("back-filled the gap") < 2 {
			return fmt.Errorf("no second reconnection and back-fill yet:\n%s", logs.String())
		}
		return nil
	})
	if n := logs.count("the server gives no history for this node"); n != 1 {
		t.Errorf("logged %d times that NoHistory has no history, want once:\n%s", n, logs.String())
	}
	if n := logs.count("refuses HistoryRead"); n != 0 {
		t.Errorf("the source took node-opcua for a server without HistoryRead:\n%s", logs.String())
	}
	for _, err := range runErrs() {
		if !strings.Contains(err.Error(), "connection lost") && !strings.Contains(err.Error(), "get endpoints") {
			t.Errorf("Run failed for another reason than the cut network: %v", err)
		}
	}
}

// checkCounter checks the counter values from last (the newest before
// the cut) to the reconnection: each once, one step at a time, each in
// its own 100 ms, up to the reconnection.
func checkCounter(t *testing.T, got []counterSample, last counterSample, cutAt, reconnected time.Time) {
	t.Helper()
	// A duplicate would be the value re-read at the reconnection, or
	// live values the back-fill had read already.
	seenTS, seenV := map[time.Time]int64{}, map[int64]bool{}
	for _, c := range got {
		if v, dup := seenTS[c.ts]; dup {
			t.Errorf("source time %s emitted twice (values %d and %d)", c.ts.Format(time.RFC3339Nano), v, c.v)
		}
		if seenV[c.v] {
			t.Errorf("value %d emitted twice", c.v)
		}
		seenTS[c.ts], seenV[c.v] = c.v, true
	}
	sort.Slice(got, func(i, j int) bool { return got[i].v < got[j].v })
	var gapValues []counterSample
	for _, c := range got {
		if c.v >= last.v && !c.ts.After(reconnected) {
			gapValues = append(gapValues, c)
		}
	}
	if len(gapValues) < 45 {
		t.Fatalf("%d values from %d (before the cut) to the reconnection %s after it, want the ~%d counted meanwhile",
			len(gapValues), last.v, reconnected.Sub(cutAt).Round(time.Millisecond), int(reconnected.Sub(cutAt)/(100*time.Millisecond)))
	}
	for i := 1; i < len(gapValues); i++ {
		prev, cur := gapValues[i-1], gapValues[i]
		if cur.v == prev.v {
			continue // a duplicate, reported above
		}
		if cur.v != prev.v+1 {
			t.Errorf("hole: %d is followed by %d", prev.v, cur.v)
		}
		if !cur.ts.After(prev.ts) {
			t.Errorf("value %d at %s is not newer than %d at %s", cur.v, cur.ts, prev.v, prev.ts)
		}
	}
	// The back-filled range reaches the reconnection: nothing is missing
	// at its end either.
	if end := gapValues[len(gapValues)-1].ts; reconnected.Sub(end) > 500*time.Millisecond {
		t.Errorf("the values end at %s, %s before the reconnection", end.Format(time.StampMilli), reconnected.Sub(end))
	}
	t.Logf("gap: cut for %s, %d values from %d to %d back-filled and live, %d values in all",
		reconnected.Sub(cutAt).Round(time.Millisecond), len(gapValues), gapValues[0].v, gapValues[len(gapValues)-1].v, len(got))
}
