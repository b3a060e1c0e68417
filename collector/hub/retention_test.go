package hub

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/share"
)

// retentionTraces are the strings a kept contribution leaves in memory or
// on disk: every firm's pseudonym and every KPI value, formatted the way
// encoding/json writes them. The values are odd enough that nothing else
// in the state (times, counts) contains them.
func retentionTraces(cs map[string]share.Contribution) []string {
	var out []string
	for id, c := range cs {
		out = append(out, id)
		for _, v := range c.KPIs {
			out = append(out, strconv.FormatFloat(v, 'f', -1, 64))
		}
	}
	return out
}

// tracesOnDisk reports the traces that some file of the hub's data
// directory still holds: the state file, and any temporary file a save
// left behind.
func tracesOnDisk(t *testing.T, dir string, traces []string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, tr := range traces {
			if strings.Contains(string(b), tr) {
				found = append(found, fmt.Sprintf("%s in %s", tr, filepath.Base(path)))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// heldContributions counts the contributions the hub holds in memory,
// closed periods included.
func heldContributions(h *Hub) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, g := range h.groups {
		n += len(g.Contributions)
	}
	return n
}

// TestHubRetention: once a period is published its raw contributions are
// discarded, from memory and from the state file, at once without a
// retention and only after the retention with one, also when the
// retention outlasts the hub's memory of the closed period (max_age). A
// hub restarted from the state file then has nothing of them and
// publishes nothing again.
func TestHubRetention(t *testing.T) {
	start := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	published := start.Add(80 * time.Minute) // after grace and quiet
	tests := []struct {
		name      string
		retention time.Duration
	}{
		{"no retention", 0},
		{"two hours", 2 * time.Hour},
		{"longer than max_age", 72 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			now := start.Add(70 * time.Minute)
			cfg := Config{DataDir: dir, Broker: share.BrokerConfig{URL: "tcp://127.0.0.1:1"},
				InfluxDB: InfluxConfig{URL: "http://127.0.0.1:1", Bucket: "cluster"},
				Grace:    5 * time.Minute, Quiet: time.Minute, Retention: tt.retention}
			w := &memWriter{}
			h, err := New(cfg, nil, WithWriter(w), WithClock(func() time.Time { return now }))
			if err != nil {
				t.Fatal(err)
			}
			cs := contribs(6, "cnc-lathe", start, func(i int) map[string]float64 {
				return map[string]float64{"oee": 0.4137 + 0.0711*float64(i), "mtbf_s": 1234.5 + 377.7*float64(i)}
			})
			for _, c := range cs {
				if err := h.Accept(share.Topic("shopfloor/v1", c.Contributor, c.Class), payload(t, c)); err != nil {
					t.Fatal(err)
				}
			}
			traces := retentionTraces(cs)
			// The check below must be able to see contributions at all.
			if got := tracesOnDisk(t, dir, traces); len(got) != len(traces) {
				t.Fatalf("before the close the data directory holds %d of the %d traces: %v", len(got), len(traces), got)
			}

			now = published
			h.closeDue(context.Background())
			if len(w.points) != 2 || h.Pending() != 0 {
				t.Fatalf("published %+v with %d pending, want both KPIs published", w.points, h.Pending())
			}
			keepUntil := published.Add(tt.retention)
			if tt.retention > 0 {
				now = keepUntil.Add(-time.Minute)
				h.closeDue(context.Background())
				if n := heldContributions(h); n != len(cs) {
					t.Errorf("a minute before the retention passed the hub holds %d contributions, want %d", n, len(cs))
				}
				if got := h.Contributors("cnc-lathe", start); len(got) != len(cs) {
					t.Errorf("contributors within the retention: %v", got)
				}
				if got := tracesOnDisk(t, dir, traces); len(got) != len(traces) {
					t.Errorf("within the retention the state file holds %d of the %d traces: %v", len(got), len(traces), got)
				}
				now = keepUntil.Add(time.Minute)
				h.closeDue(context.Background())
			}
			if n := heldContributions(h); n != 0 {
				t.Errorf("after the retention the hub holds %d contributions in memory", n)
			}
			if got := h.Contributors("cnc-lathe", start); len(got) != 0 {
				t.Errorf("contributors after the retention: %v", got)
			}
			if got := tracesOnDisk(t, dir, traces); len(got) != 0 {
				t.Errorf("after the retention the data directory still holds %v", got)
			}

			// A restart from the state file: nothing to republish, and
			// the period stays closed to the same firms.
			w2 := &memWriter{}
			h2, err := New(cfg, nil, WithWriter(w2), WithClock(func() time.Time { return now }))
			if err != nil {
				t.Fatal(err)
			}
			if n := heldContributions(h2); n != 0 || h2.Pending() != 0 {
				t.Errorf("restarted hub holds %d contributions, %d pending", n, h2.Pending())
			}
			for _, c := range cs {
				var pe *ParseError
				if err := h2.Accept(share.Topic("shopfloor/v1", c.Contributor, c.Class), payload(t, c)); !errors.As(err, &pe) {
					t.Errorf("restarted hub accepted %s's contribution to the published period: %v", c.Contributor, err)
				}
			}
			for _, later := range []time.Duration{0, 2 * time.Hour, 100 * time.Hour} {
				now = now.Add(later)
				h2.closeDue(context.Background())
			}
			if len(w2.points) != 0 {
				t.Errorf("restarted hub published %+v again", w2.points)
			}
			if got := tracesOnDisk(t, dir, traces); len(got) != 0 {
				t.Errorf("after the restart the data directory holds %v", got)
			}
		})
	}
}

// TestHubDiscardSaveRetried: when the state file cannot be written as
// contributions are discarded, the next tick writes it, although memory
// has nothing left to discard by then.
func TestHubDiscardSaveRetried(t *testing.T) {
	start := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		retention time.Duration
		// failAt is when the save fails: at the close, or when the
		// retention passes.
		failAt time.Time
	}{
		{"discarded at the close", 0, start.Add(80 * time.Minute)},
		{"discarded after the retention", 2 * time.Hour, start.Add(80*time.Minute + 2*time.Hour + time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			now := start.Add(70 * time.Minute)
			w := &memWriter{}
			h, err := New(Config{DataDir: dir, Broker: share.BrokerConfig{URL: "tcp://127.0.0.1:1"},
				InfluxDB: InfluxConfig{URL: "http://127.0.0.1:1", Bucket: "cluster"},
				Grace:    5 * time.Minute, Quiet: time.Minute, Retention: tt.retention},
				nil, WithWriter(w), WithClock(func() time.Time { return now }))
			if err != nil {
				t.Fatal(err)
			}
			cs := contribs(5, "cnc-lathe", start, func(i int) map[string]float64 { return map[string]float64{"oee": 0.3141 + 0.0523*float64(i)} })
			for _, c := range cs {
				if err := h.Accept(share.Topic("shopfloor/v1", c.Contributor, c.Class), payload(t, c)); err != nil {
					t.Fatal(err)
				}
			}
			traces := retentionTraces(cs)
			tick := func(at time.Time) {
				now = at
				good := h.state
				if at.Equal(tt.failAt) {
					h.state = filepath.Join(dir, "missing", "hub-state.json") // its directory does not exist
				}
				h.closeDue(context.Background())
				h.state = good
			}
			tick(start.Add(80 * time.Minute)) // the close
			if tt.retention > 0 {
				tick(tt.failAt)
			}
			if len(w.points) != 1 || heldContributions(h) != 0 {
				t.Fatalf("published %+v, %d contributions held; want published and discarded", w.points, heldContributions(h))
			}
			if got := tracesOnDisk(t, dir, traces); len(got) != len(traces) {
				t.Fatalf("the failed save changed the state file: %d of %d traces left", len(got), len(traces))
			}
			now = now.Add(time.Second)
			h.closeDue(context.Background())
			if got := tracesOnDisk(t, dir, traces); len(got) != 0 {
				t.Errorf("the next tick did not write the discard: the data directory holds %v", got)
			}
		})
	}
}
