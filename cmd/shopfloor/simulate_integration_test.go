//go:build integration

package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// TestSimulatePublishesEveryMachine runs `shopfloor simulate` against real
// Mosquitto and sees valid telemetry from each simulated machine.
func TestSimulatePublishesEveryMachine(t *testing.T) {
	broker := collectortest.Mosquitto(t)
	seen := map[string]map[string]any{}
	var mu sync.Mutex
	sub := collectortest.Publisher(t, broker.URL())
	tok := sub.Subscribe("factory/+/+/telemetry", 1, func(_ paho.Client, m paho.Message) {
		var v map[string]any
		if err := json.Unmarshal(m.Payload(), &v); err != nil {
			t.Errorf("%s: invalid JSON %q", m.Topic(), m.Payload())
			return
		}
		mu.Lock()
		seen[m.Topic()] = v
		mu.Unlock()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	cmd := exec.Command(agentBin, "simulate", "--mqtt", broker.URL(), "--cncs", "3", "--robots", "2", "--lines", "2", "--time-factor", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	want := []string{"line-1/cnc-01", "line-2/cnc-02", "line-1/cnc-03", "line-1/robot-01", "line-2/robot-02"}
	collectortest.Eventually(t, 20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, w := range want {
			v, ok := seen["factory/"+w+"/telemetry"]
			if !ok {
				return fmt.Errorf("nothing from %s yet", w)
			}
			if v["state"] == nil || v["machine_type"] == nil || v["ts"] == nil {
				return fmt.Errorf("%s: payload %v lacks state, machine_type or ts", w, v)
			}
		}
		return nil
	})
}
