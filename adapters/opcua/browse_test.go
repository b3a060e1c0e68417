package opcua

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

func TestBrowseTreeAndSnippet(t *testing.T) {
	ts := startTestServer(t, defaultMachines())
	var tree, progress bytes.Buffer
	snip, err := Browse(context.Background(), BrowseOptions{Endpoint: ts.endpoint(), DataDir: t.TempDir()}, &tree, &progress)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Machines/", "cnc-01/", "SpindleSpeed  [Double]", "JointTorques  [Double[]]", "ProgramName  [String]"} {
		if !strings.Contains(tree.String(), want) {
			t.Errorf("tree lacks %q:\n%s", want, tree.String())
		}
	}
	if !strings.Contains(progress.String(), "browsed") {
		t.Errorf("no progress line: %q", progress.String())
	}
	f := loadAgentFile(t, "snippet.yaml", snip, nil)
	src := f.Sources[0]
	for _, want := range []string{"Objects/Machines/*/SpindleSpeed", "Objects/Machines/*/JointTorques"} {
		if !bytes.Contains(snip, []byte(want)) {
			t.Errorf("snippet lacks path %s:\n%s", want, snip)
		}
	}
	// The snippet works: run it and normalise what it reads.
	cfg := *src.OPCUA
	cfg.PublishingInterval = 50 * time.Millisecond
	s := newTestSource(t, cfg, "")
	out := &collectortest.Output{}
	supervise(t, s, out)
	norm, err := collector.NewNormalizer(collector.NormalizeConfig{Asset: src.Asset, Mapping: src.Mapping})
	if err != nil {
		t.Fatal(err)
	}
	collectortest.Eventually(t, 10*time.Second, func() error {
		got := map[string]bool{}
		for _, b := range out.Batches() {
			samples, _ := norm.Normalize(b, nil, nil)
			for _, s := range samples {
				got[s.Asset.Machine+"/"+s.Signal] = true
			}
		}
		for _, want := range []string{"cnc-01/spindle_speed_rpm", "cnc-01/part_count_good", "cnc-01/program", "robot-01/joint_torque_nm_3", "robot-01/tcp_speed_mm_s", "robot-01/cycle_count"} {
			if !got[want] {
				return &missing{want, got}
			}
		}
		return nil
	})
}

type missing struct {
	want string
	got  map[string]bool
}

func (m *missing) Error() string {
	keys := make([]string, 0, len(m.got))
	for k := range m.got {
		keys = append(keys, k)
	}
	return "no " + m.want + " yet; have " + strings.Join(keys, ", ")
}

// TestBrowseDepthLimit: the walk stops at max_depth levels below the
// start node, and the progress line says so.
func TestBrowseDepthLimit(t *testing.T) {
	ts := startTestServer(t, defaultMachines())
	var tree, progress bytes.Buffer
	if _, err := Browse(context.Background(), BrowseOptions{Endpoint: ts.endpoint(), DataDir: t.TempDir(), MaxDepth: 2}, &tree, &progress); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tree.String(), "cnc-01/") {
		t.Errorf("tree lacks the machines at depth 2:\n%s", tree.String())
	}
	if strings.Contains(tree.String(), "SpindleSpeed") {
		t.Errorf("tree holds variables at depth 3 with max depth 2:\n%s", tree.String())
	}
	if !strings.Contains(progress.String(), "of at most 2") {
		t.Errorf("progress %q does not say the depth limit", progress.String())
	}
}
