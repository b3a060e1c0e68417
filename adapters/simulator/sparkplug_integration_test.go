//go:build integration

package simulator

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/adapters/sparkplug"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// TestSparkplugEdgeNodeHonoursRebirth: a host that starts after the edge
// node's births sees data by alias it cannot name, asks for a rebirth,
// and the simulator's edge node answers with births, after which the data
// carries real metric names.
func TestSparkplugEdgeNodeHonoursRebirth(t *testing.T) {
	broker := collectortest.Mosquitto(t)
	fleet, err := NewFleet(Config{CNCs: 1, Robots: 1, Start: t0}, nil)
	if err != nil {
		t.Fatal(err)
	}
	node, err := NewSparkplugEdgeNode(broker.URL(), "demo", "sim-edge", fleet.Machines)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	step := 0
	publish := func() {
		step++
		for _, m := range fleet.Machines {
			if err := node.Publish(ctx, m, m.Advance(t0.Add(time.Duration(step)*10*time.Second))); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < 5; i++ { // births and data go out before any host listens
		publish()
	}

	cfg := sparkplug.Config{URL: broker.URL(), HostID: "shopfloor-test"}
	host, err := sparkplug.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := &collectortest.Output{}
	done := make(chan error, 1)
	go func() { done <- host.Run(ctx, out) }()
	defer func() { cancel(); <-done }()

	collectortest.Eventually(t, 30*time.Second, func() error {
		publish()
		if node.Rebirths() == 0 {
			return fmt.Errorf("no rebirth requested yet")
		}
		names := map[string]bool{}
		for _, s := range out.Samples() {
			names[s.Signal] = true
		}
		for _, want := range []string{"SpindleSpeed", "State", "JointTorque_6", "PartCountGood"} {
			if !names[want] {
				return fmt.Errorf("no %s yet (have %v)", want, names)
			}
		}
		return nil
	})
	for _, s := range out.Samples() {
		if strings.HasPrefix(s.Signal, "alias") {
			t.Fatalf("a metric arrived under an alias name: %+v", s)
		}
	}
}
