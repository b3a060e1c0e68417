package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestClusterExampleConfigs: the shipped hub and agent-with-sharing
// examples load and validate.
func TestClusterExampleConfigs(t *testing.T) {
	t.Setenv("HUB_MQTT_PASSWORD", "pw")
	t.Setenv("CLUSTER_MQTT_USER", strings.Repeat("ab", 16))
	t.Setenv("CLUSTER_MQTT_PASSWORD", "pw")
	var stderr bytes.Buffer
	if code := run([]string{"check", "--config", "../../deploy/cluster/agent-share.yaml"}, &bytes.Buffer{}, &stderr); code != exitOK {
		t.Errorf("agent-share.yaml: exit %d\n%s", code, stderr.String())
	}
	var hc HubFileConfig
	if err := loadHubConfig("../../deploy/cluster/hub.yaml", &hc); err != nil {
		t.Errorf("hub.yaml: %v", err)
	}
	if hc.Hub.K != 5 || hc.Hub.InfluxDB.Measurement != "benchmark" {
		t.Errorf("hub.yaml: %+v", hc.Hub)
	}
}

// TestShareID prints a stable pseudonym.
func TestShareID(t *testing.T) {
	t.Setenv("CLUSTER_MQTT_USER", "x")
	t.Setenv("CLUSTER_MQTT_PASSWORD", "pw")
	t.Setenv("SHOPFLOOR_DATA_DIR", t.TempDir())
	var out1, out2, stderr bytes.Buffer
	if code := run([]string{"share-id", "--config", "../../deploy/cluster/agent-share.yaml"}, &out1, &stderr); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	run([]string{"share-id", "--config", "../../deploy/cluster/agent-share.yaml"}, &out2, &stderr)
	if id := strings.TrimSpace(out1.String()); len(id) != 32 || out1.String() != out2.String() {
		t.Errorf("share-id printed %q then %q", out1.String(), out2.String())
	}
}
