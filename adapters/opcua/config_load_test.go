package opcua

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

// agentFile mirrors the agent's config file as far as an OPC UA source
// goes, so tests can load the example and browse snippets the way
// `shopfloor check` does: strictly, with ${VAR} expansion, then
// SetDefaults and Validate.
type agentFile struct {
	Agent   map[string]any `yaml:"agent"`
	Sources []agentSource  `yaml:"sources"`
	Sink    map[string]any `yaml:"sink"`
}

type agentSource struct {
	Name    string                  `yaml:"name"`
	OPCUA   *Config                 `yaml:"opcua"`
	Asset   collector.AssetRule     `yaml:"asset"`
	Mapping []collector.MappingRule `yaml:"mapping"`
}

func (f *agentFile) SetDefaults() {
	for i := range f.Sources {
		if f.Sources[i].OPCUA != nil {
			f.Sources[i].OPCUA.SetDefaults()
		}
	}
}

func (f *agentFile) Validate() error {
	var errs []error
	for i, s := range f.Sources {
		key := config.Index("sources", i)
		if s.OPCUA == nil {
			errs = append(errs, config.Missing(key+".opcua"))
			continue
		}
		errs = append(errs, config.Nest(key+".opcua", s.OPCUA.Validate()))
		errs = append(errs, config.Nest(key, collector.NormalizeConfig{Asset: s.Asset, Mapping: s.Mapping}.Validate()))
	}
	return errors.Join(errs...)
}

func loadAgentFile(t testing.TB, name string, data []byte, env map[string]string) *agentFile {
	t.Helper()
	var f agentFile
	err := config.Parse(name, data, &f, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	if err != nil {
		t.Fatalf("%s does not load:\n%v\n---\n%s", name, err, data)
	}
	if len(f.Sources) != 1 || f.Sources[0].OPCUA == nil {
		t.Fatalf("%s: want one opcua source, got %+v", name, f.Sources)
	}
	return &f
}

func TestExampleConfigLoads(t *testing.T) {
	data, err := os.ReadFile("../../deploy/examples/opcua.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f := loadAgentFile(t, "opcua.yaml", data, map[string]string{"OPCUA_ENDPOINT": "opc.tcp://plc:4840"})
	if got := f.Sources[0].OPCUA.Endpoint; got != "opc.tcp://plc:4840" {
		t.Errorf("endpoint = %q, want it from OPCUA_ENDPOINT", got)
	}
}

func TestBackfillKeysLoad(t *testing.T) {
	const head = "sources:\n  - name: plc\n    opcua:\n      endpoint: opc.tcp://plc:4840\n      nodes: [{node_id: i=2258}]\n"
	f := loadAgentFile(t, "on.yaml", []byte(head), nil)
	if c := f.Sources[0].OPCUA; !c.BackfillEnabled() || c.BackfillMax != time.Hour {
		t.Errorf("without the keys: backfill %v, backfill_max %s; want on, 1h", c.BackfillEnabled(), c.BackfillMax)
	}
	f = loadAgentFile(t, "off.yaml", []byte(head+"      backfill: false\n      backfill_max: ${MAX}\n"), map[string]string{"MAX": "15m"})
	if c := f.Sources[0].OPCUA; c.BackfillEnabled() || c.BackfillMax != 15*time.Minute {
		t.Errorf("backfill: false, backfill_max: 15m loaded as %v, %s", c.BackfillEnabled(), c.BackfillMax)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"      backfil: true\n", `backfil: unknown key; did you mean "backfill"?`},
		{"      backfill: sometimes\n", "want"},
		{"      backfill_max: 10\n", "backfill_max"},
		{"      backfill_max: 500ms\n", "backfill_max: must be at least 1s"},
	} {
		var f agentFile
		err := config.Parse("bad.yaml", []byte(head+tc.yaml), &f, func(string) (string, bool) { return "", false })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.yaml, err, tc.want)
		}
	}
}
