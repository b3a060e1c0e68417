package opcua

import (
	"fmt"
	"testing"
	"time"

	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// addVariable adds machine/name to the running server, as a PLC whose
// program was extended: a node with the id "<machine>.<name>" and no
// references, so it is found by its id, not by browsing.
func (ts *testServer) addVariable(machine, name string, v any) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	key := machine + "/" + name
	ts.vmu.Lock()
	ts.values[key] = &ua.DataValue{EncodingMask: ua.DataValueValue | ua.DataValueSourceTimestamp, Value: ua.MustVariant(v), SourceTimestamp: time.Now()}
	ts.vmu.Unlock()
	n := server.NewVariableNode(ua.NewStringNodeID(ts.ns.ID(), machine+"."+name), name, func() *ua.DataValue {
		ts.vmu.Lock()
		defer ts.vmu.Unlock()
		d := *ts.values[key]
		return &d
	})
	ts.ns.AddNode(n)
	ts.vars[key] = n
}

// TestSourceBadNodeRetried: a node the server does not have is reported
// and tried again every bad_node_retry, not faster; once the server has
// it, its values flow and it is no longer reported, within the same
// session (no reconnect), while the good node flowed throughout.
func TestSourceBadNodeRetried(t *testing.T) {
	t.Parallel()
	ts := startTestServer(t, defaultMachines())
	late := fmt.Sprintf("ns=%d;s=cnc-01.Late", ts.ns.ID())
	s := newTestSource(t, Config{
		Endpoint:           ts.endpoint(),
		PublishingInterval: 50 * time.Millisecond,
		BadNodeRetry:       time.Second,
		Nodes: []Node{
			{Path: "Objects/Machines/cnc-01/SpindleSpeed"},
			{NodeID: late, Origin: "Objects/Machines/cnc-01"},
		},
	}, "")
	out := &collectortest.Output{}
	supervise(t, s, out)
	waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", nil)
	collectortest.Eventually(t, 5*time.Second, func() error {
		if bad := s.BadNodes(); len(bad) != 1 || bad[0].Node != late || bad[0].Reason != ReasonNodeUnknown {
			return fmt.Errorf("BadNodes = %+v, want %s unknown", bad, late)
		}
		return nil
	})
	// Over 2.5 s the retry runs two or three times, not at the pace of
	// the publishing interval.
	before := out.BadCounts()[ReasonNodeUnknown]
	time.Sleep(2500 * time.Millisecond) // the window measured, not a wait for a condition
	if n := out.BadCounts()[ReasonNodeUnknown] - before; n < 1 || n > 4 {
		t.Errorf("the unknown node was tried %d times in 2.5 s with bad_node_retry 1s", n)
	}

	ts.addVariable("cnc-01", "Late", float64(7))
	added := time.Now()
	waitFor(t, out, "Objects/Machines/cnc-01|Late", func(s collector.Sample) bool { return s.Value == collector.Float(7) })
	if d := time.Since(added); d > 3*time.Second {
		t.Errorf("the node's value arrived %s after it appeared, want within about bad_node_retry", d.Round(time.Millisecond))
	}
	if bad := s.BadNodes(); len(bad) != 0 {
		t.Errorf("BadNodes = %+v after the node appeared, want none", bad)
	}
	// It is monitored, not read once.
	ts.set("cnc-01/Late", float64(8), ua.StatusOK)
	waitFor(t, out, "Objects/Machines/cnc-01|Late", func(s collector.Sample) bool { return s.Value == collector.Float(8) })
	if states := out.ConnectedStates(); len(states) != 1 || !states[0] {
		t.Errorf("connection states %v, want one connection throughout", states)
	}
}

// TestSourcePathsResolvedAgainAfterReconnect: browse-path patterns are
// resolved again on every connect, so a machine that appeared while the
// connection was down (the server restarted with a new machine) is read
// after the reconnect, beside the one read before.
func TestSourcePathsResolvedAgainAfterReconnect(t *testing.T) {
	t.Parallel()
	ts := startTestServer(t, defaultMachines())
	s := newTestSource(t, Config{
		Endpoint:           ts.endpoint(),
		PublishingInterval: 50 * time.Millisecond,
		WatchdogInterval:   500 * time.Millisecond,
		RequestTimeout:     time.Second,
		Nodes:              []Node{{Path: "Objects/Machines/*/SpindleSpeed"}},
	}, "")
	out := &collectortest.Output{}
	supervise(t, s, out)
	waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", nil)
	if _, ok := latest(out)["Objects/Machines/cnc-02|SpindleSpeed"]; ok {
		t.Fatal("cnc-02 delivered before it existed")
	}

	ts.stop()
	ts.machines["cnc-02"] = map[string]any{"SpindleSpeed": float64(8000)}
	ts.start()
	waitFor(t, out, "Objects/Machines/cnc-02|SpindleSpeed", func(s collector.Sample) bool { return s.Value == collector.Float(8000) })
	ts.set("cnc-01/SpindleSpeed", float64(1), ua.StatusOK)
	waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", func(s collector.Sample) bool { return s.Value == collector.Float(1) })
}
