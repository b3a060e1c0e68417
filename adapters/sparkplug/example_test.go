package sparkplug

import (
	"testing"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

// TestExampleConfig keeps deploy/examples/sparkplug.yaml valid for this
// package until the agent's own config test covers it: the sparkplug
// section loads strictly and validates, and its asset rule places a device
// and an edge node.
func TestExampleConfig(t *testing.T) {
	var file struct {
		Agent    any `yaml:"agent"`
		Pipeline any `yaml:"pipeline"`
		Sink     any `yaml:"sink"`
		Sources  []struct {
			Name      string                  `yaml:"name"`
			Sparkplug *Config                 `yaml:"sparkplug"`
			Asset     collector.AssetRule     `yaml:"asset"`
			Mapping   []collector.MappingRule `yaml:"mapping"`
		} `yaml:"sources"`
	}
	if err := config.Load("../../deploy/examples/sparkplug.yaml", &file, func(string) (string, bool) { return "", false }); err != nil {
		t.Fatal(err)
	}
	if len(file.Sources) != 1 || file.Sources[0].Sparkplug == nil {
		t.Fatalf("sources %+v, want one sparkplug source", file.Sources)
	}
	src := file.Sources[0]
	if _, err := New(*src.Sparkplug, nil); err != nil {
		t.Fatalf("sparkplug section: %v", err)
	}
	n, err := collector.NewNormalizer(collector.NormalizeConfig{Asset: src.Asset, Mapping: src.Mapping})
	if err != nil {
		t.Fatal(err)
	}
	got, problems := n.Normalize(collector.Batch{Origin: origin(nodeKey{"hal2", "line1"}, "mill-1"), Samples: []collector.Sample{
		{Signal: "Status/State", Value: collector.Int(1)},
		{Signal: "Power", Value: collector.Float(5.4)},
	}}, nil, nil)
	if len(problems) != 0 || len(got) != 2 {
		t.Fatalf("samples %+v, problems %v", got, problems)
	}
	want := collector.Asset{Site: "plant", Area: "hal2", Line: "line1", Machine: "mill-1"}
	if got[0].Asset != want || got[0].Signal != "state" || got[0].Value != collector.String("running") || got[1].Value != collector.Float(5400) {
		t.Errorf("device samples %+v", got)
	}
	got, problems = n.Normalize(collector.Batch{Origin: origin(nodeKey{"hal2", "line1"}, ""), Samples: []collector.Sample{
		{Signal: "state", Value: collector.String("offline")},
	}}, nil, nil)
	if len(problems) != 0 || len(got) != 1 || got[0].Asset.Machine != "line1" {
		t.Errorf("edge node samples %+v, problems %v", got, problems)
	}
}
