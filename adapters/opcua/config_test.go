package opcua

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

func TestConfigDefaults(t *testing.T) {
	c := Config{Endpoint: "opc.tcp://plc:4840", SecurityPolicy: PolicyBasic256Sha256, Auth: Auth{Username: "u"}, Nodes: []Node{{Path: "Objects/x"}}}
	c.SetDefaults()
	if c.SecurityMode != SecurityModeSignAndEncrypt || c.Auth.Method != AuthUsername || c.Nodes[0].StartNode != DefaultStartNode || c.Nodes[0].QueueSize != DefaultQueueSize {
		t.Errorf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}

func TestConfigValidateReportsEveryProblemWithKeys(t *testing.T) {
	c := Config{
		Endpoint:       "http://plc",
		SecurityPolicy: PolicyBasic256,
		SecurityMode:   "Encrypt",
		Auth:           Auth{Method: "token", CertFile: "c.pem"},
		Mode:           "stream",
		Nodes: []Node{
			{},
			{NodeID: "ns=2;s=x", Path: "Objects/x"},
			{Path: "Objects//x"},
			{NodeID: "bogus"},
			{Path: "Objects/x", Signal: "Bad Name", Deadband: &Deadband{Type: "relative", Value: -1}},
		},
	}
	c.SetDefaults()
	keys := map[string]bool{}
	for _, e := range config.Flatten(c.Validate()) {
		var fe *config.FieldError
		if !errors.As(e, &fe) {
			t.Errorf("not a FieldError: %v", e)
			continue
		}
		keys[fe.Key] = true
	}
	for _, want := range []string{"endpoint", "security_policy", "security_mode", "auth.method", "auth.cert_file", "mode",
		"nodes[0].node_id", "nodes[1].path", "nodes[2].path", "nodes[3].node_id", "nodes[4].signal", "nodes[4].deadband.type", "nodes[4].deadband.value"} {
		if !keys[want] {
			t.Errorf("no error for %s; got %v", want, keys)
		}
	}
	var empty Config
	empty.SetDefaults()
	err := empty.Validate()
	if err == nil || !strings.Contains(err.Error(), "endpoint: is required") || !strings.Contains(err.Error(), "shopfloor browse") {
		t.Errorf("empty config: %v", err)
	}
	dep := Config{Endpoint: "opc.tcp://x:4840", SecurityPolicy: PolicyBasic256, AllowDeprecated: true, Nodes: []Node{{NodeID: "i=2258"}}}
	dep.SetDefaults()
	if err := dep.Validate(); err != nil {
		t.Errorf("deprecated policy with allow_deprecated: %v", err)
	}
}

func TestConfigBackfill(t *testing.T) {
	c := Config{Endpoint: "opc.tcp://plc:4840", Nodes: []Node{{NodeID: "i=2258"}}}
	c.SetDefaults()
	if !c.BackfillEnabled() || c.Backfill == nil || !*c.Backfill || c.BackfillMax != DefaultBackfillMax {
		t.Errorf("defaults: backfill %v, backfill_max %s; want on, %s", c.Backfill, c.BackfillMax, DefaultBackfillMax)
	}
	off := false
	c = Config{Endpoint: "opc.tcp://plc:4840", Nodes: []Node{{NodeID: "i=2258"}}, Backfill: &off, BackfillMax: -time.Minute}
	c.SetDefaults()
	if c.BackfillEnabled() {
		t.Error("backfill: false was turned on by the defaults")
	}
	var keys []string
	for _, e := range config.Flatten(c.Validate()) {
		var fe *config.FieldError
		if errors.As(e, &fe) {
			keys = append(keys, fe.Key)
		}
	}
	if len(keys) != 1 || keys[0] != "backfill_max" {
		t.Errorf("negative backfill_max: errors for %v, want backfill_max only", keys)
	}
}
