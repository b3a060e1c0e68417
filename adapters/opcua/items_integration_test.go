//go:build integration

package opcua

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// typesVariables are the variables server.js serves under
// Objects/Machines/types-01.
var typesVariables = []string{
	"Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float", "Double",
	"String", "DateTime", "Guid", "ByteString", "NodeId", "StatusCode", "QualifiedName", "LocalizedText",
	"Mode", "Broken", "Doubtful",
}

// TestInteropNodeOPCUAOperationLimits: node-opcua publishes operation
// limits of 5 (MaxMonitoredItemsPerCall, MaxNodesPerRead,
// MaxNodesPerBrowse) and answers BadTooManyOperations to any call beyond
// them. With max_items_per_call left at 0 the source reads these limits
// and browses, reads properties, creates its 36 monitored items (or
// polls them) in batches within them: every variable delivers, none is
// reported bad.
func TestInteropNodeOPCUAOperationLimits(t *testing.T) {
	t.Parallel()
	endpoint := startNodeServer(t, "--limits", "5")
	for _, mode := range []string{ModeSubscribe, ModePoll} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			s := newTestSource(t, Config{
				Endpoint:           endpoint,
				Mode:               mode,
				PublishingInterval: 100 * time.Millisecond,
				PollInterval:       100 * time.Millisecond,
				Nodes:              []Node{{Path: "Objects/Machines/*/*"}},
			}, "")
			out := &collectortest.Output{}
			supervise(t, s, out)
			collectortest.Eventually(t, 15*time.Second, func() error {
				got := latest(out)
				var missing []string
				for _, v := range typesVariables {
					if _, ok := got["Objects/Machines/types-01|"+v]; !ok {
						missing = append(missing, v)
					}
				}
				for _, k := range []string{"cnc-01|Temperature", "cnc-01|State", "robot-01|JointTorques_6"} {
					if _, ok := got["Objects/Machines/"+k]; !ok {
						missing = append(missing, k)
					}
				}
				if len(missing) > 0 {
					return fmt.Errorf("no value yet from %s; bad nodes %+v", strings.Join(missing, ", "), s.BadNodes())
				}
				return nil
			})
			// The AnalogItem's EngineeringUnits came through the
			// batched property reads.
			if temp := latest(out)["Objects/Machines/cnc-01|Temperature"]; temp.Unit != "°F" || temp.Value != collector.Float(212) {
				t.Errorf("Temperature = %s %q, want 212 °F", temp.Value.Format(), temp.Unit)
			}
			if bad := s.BadNodes(); len(bad) != 0 {
				t.Errorf("bad nodes %+v, want none", bad)
			}
		})
	}
}

// TestInteropNodeOPCUAPerNodeSamplingAndQueue: sampling_interval and
// queue_size per node reach node-opcua. SpindleSpeed and hist-01/Counter
// both change every 100 ms; the publishing interval is 1 s, so over
// three seconds a node brings about 30 values when it is sampled every
// 100 ms into a queue of 10, and about 3 when either its queue holds
// one value or it is sampled once a second.
func TestInteropNodeOPCUAPerNodeSamplingAndQueue(t *testing.T) {
	t.Parallel()
	endpoint := startNodeServer(t, "--history")
	const speed, counter = "Objects/Machines/cnc-01|SpindleSpeed", "Objects/Machines/hist-01|Counter"
	for _, tc := range []struct {
		name           string
		speed, counter Node
		many, few      string
	}{
		{"QueueSize",
			Node{Path: "Objects/Machines/cnc-01/SpindleSpeed", SamplingInterval: 100 * time.Millisecond, QueueSize: 10},
			Node{Path: "Objects/Machines/hist-01/Counter", SamplingInterval: 100 * time.Millisecond, QueueSize: 1},
			speed, counter},
		{"SamplingInterval",
			Node{Path: "Objects/Machines/cnc-01/SpindleSpeed", SamplingInterval: time.Second, QueueSize: 10},
			Node{Path: "Objects/Machines/hist-01/Counter", SamplingInterval: 100 * time.Millisecond, QueueSize: 10},
			counter, speed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newTestSource(t, Config{
				Endpoint:           endpoint,
				PublishingInterval: time.Second,
				Backfill:           new(bool), // live values only
				Nodes:              []Node{tc.speed, tc.counter},
			}, "")
			out := &collectortest.Output{}
			supervise(t, s, out)
			waitFor(t, out, speed, nil)
			waitFor(t, out, counter, nil)
			count := func() map[string]int {
				n := map[string]int{}
				for _, b := range out.Batches() {
					for _, smp := range b.Samples {
						n[b.Origin+"|"+smp.Signal]++
					}
				}
				return n
			}
			before := count()
			time.Sleep(3 * time.Second) // the window measured, not a wait for a condition
			after := count()
			many, few := after[tc.many]-before[tc.many], after[tc.few]-before[tc.few]
			t.Logf("in 3 s: %s %d values, %s %d", tc.many, many, tc.few, few)
			if many < 15 {
				t.Errorf("%s brought %d values in 3 s, want about 30 (sampled every 100 ms, queue of 10)", tc.many, many)
			}
			if few > 8 {
				t.Errorf("%s brought %d values in 3 s, want about 3 (one per publish)", tc.few, few)
			}
		})
	}
}
