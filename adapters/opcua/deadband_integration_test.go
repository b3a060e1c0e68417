//go:build integration

package opcua

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// lockedBuffer is a log destination the source and the test share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestInteropDeadbandFallback: node-opcua refuses a percent deadband on a
// variable without an EURange; the source says so, monitors the node
// without the filter, and its value arrives beside a node whose absolute
// deadband the server took. A deadband on a String is not sent at all
// (deadbands are for numeric nodes), so it is not refused either.
func TestInteropDeadbandFallback(t *testing.T) {
	endpoint := nodeServer(t, false, "", "")
	var logs lockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := Config{
		Endpoint:           endpoint,
		PublishingInterval: 200 * time.Millisecond,
		Nodes: []Node{
			{Path: "Objects/Machines/types-01/Double", Deadband: &Deadband{Type: DeadbandPercent, Value: 10}},
			{Path: "Objects/Machines/cnc-01/SpindleSpeed", Deadband: &Deadband{Type: DeadbandAbsolute, Value: 1}},
			{Path: "Objects/Machines/types-01/String", Deadband: &Deadband{Type: DeadbandAbsolute, Value: 1}},
		},
	}
	cfg.SetDefaults()
	src, err := New(cfg, t.TempDir(), logger)
	if err != nil {
		t.Fatal(err)
	}
	out := &collectortest.Output{}
	collectortest.Start(t, src, out)
	collectortest.Eventually(t, 30*time.Second, func() error {
		got := map[string]bool{}
		for _, b := range out.Batches() {
			for _, s := range b.Samples {
				got[b.Origin+"/"+s.Signal] = true
			}
		}
		if len(got) < 3 {
			return fmt.Errorf("values so far: %v", got)
		}
		return nil
	})
	l := logs.String()
	if !strings.Contains(l, "the server refused the deadband") || !strings.Contains(l, "types-01") {
		t.Errorf("no warning about the refused deadband of types-01/Double in the log:\n%s", l)
	}
	if strings.Count(l, "the server refused the deadband") != 1 {
		t.Errorf("the absolute deadband on SpindleSpeed or the one on String was refused too, or the warning repeats:\n%s", l)
	}
}
