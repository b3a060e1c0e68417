//go:build integration

package hub

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
	"github.com/noordoostpolder/shopfloor/collector/share"
)

func (m *memWriter) written() []Point {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Point(nil), m.points...)
}

// TestClusterTwoHubsOneGroup: two hubs in one group with the same
// classes, behind the shipped broker config, split the firms' messages
// between them (each takes some from the shared subscription, none is
// taken twice), yet each ends up with every firm's contribution and
// writes the quartiles over all of them; nothing raw is left retained on
// the broker.
func TestClusterTwoHubsOneGroup(t *testing.T) {
	p := collectortest.NewPKI(t, "cluster-ca")
	oee := []float64{0.52, 0.61, 0.44, 0.7, 0.58, 0.66, 0.49, 0.73}
	ids := make([]string, len(oee))
	users := map[string]string{"shopfloor-hub": "pw-hub"}
	for i := range ids {
		ids[i] = newPseudonym(t)
		users[ids[i]] = "pw-" + ids[i]
	}
	_, url := clusterBroker(t, p, users)
	start := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)

	// One clock for both hubs: the period closes when the test moves it,
	// not after some wait.
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	hubCfg := func(clientID string) Config {
		b := brokerConfig(url, "shopfloor-hub", "pw-hub", p)
		b.ClientID = clientID
		return Config{DataDir: t.TempDir(), Broker: b, Classes: []string{"cnc-5axis"},
			InfluxDB: InfluxConfig{URL: "http://127.0.0.1:1", Bucket: "x"}, Quiet: time.Minute}
	}
	w1, w2 := &memWriter{}, &memWriter{}
	h1, _ := startHub(t, hubCfg("shopfloor-hub-1"), WithWriter(w1), WithClock(now))
	h2, _ := startHub(t, hubCfg("shopfloor-hub-2"), WithWriter(w2), WithClock(now))

	firms := make([]paho.Client, len(ids))
	for i, id := range ids {
		c, err := client(t, brokerConfig(url, id, users[id], p), "sf-"+id)
		if err != nil {
			t.Fatalf("firm %d cannot connect: %v", i, err)
		}
		firms[i] = c
	}
	for i, id := range ids {
		publish(t, firms[i], share.Topic("shopfloor/v1", id, "cnc-5axis"), contribution(id, "cnc-5axis", start, oee[i]))
	}
	for _, h := range []*Hub{h1, h2} {
		collectortest.Eventually(t, 20*time.Second, func() error {
			if got := h.Contributors("cnc-5axis", start); len(got) != len(ids) {
				return fmt.Errorf("a hub holds %d of %d contributions: %v", len(got), len(ids), h.Accepted())
			}
			return nil
		})
	}
	a1, a2 := h1.Accepted(), h2.Accepted()
	t.Logf("hub 1 accepted %v, hub 2 %v", a1, a2)
	if a1[SourceDirect] < 1 || a2[SourceDirect] < 1 {
		t.Fatalf("the broker did not split the messages: hub 1 took %d directly, hub 2 %d", a1[SourceDirect], a2[SourceDirect])
	}
	if n := a1[SourceDirect] + a2[SourceDirect]; n != int64(len(ids)) {
		t.Errorf("%d messages taken directly, want each of the %d once", n, len(ids))
	}
	if a1[SourceMirror] != a2[SourceDirect] || a2[SourceMirror] != a1[SourceDirect] {
		t.Errorf("each hub should hold the other's direct contributions as mirrors: %v, %v", a1, a2)
	}

	// The period closes for both.
	clock.Add(int64(2 * time.Hour))
	var vs = map[string][]float64{}
	for i, id := range ids {
		for kpi, v := range contribution(id, "cnc-5axis", start, oee[i]).KPIs {
			vs[kpi] = append(vs[kpi], v)
		}
	}
	var written [2][]Point
	for i, w := range []*memWriter{w1, w2} {
		collectortest.Eventually(t, 20*time.Second, func() error {
			if written[i] = w.written(); len(written[i]) != len(vs) {
				return fmt.Errorf("hub %d wrote %d points, want %d", i+1, len(written[i]), len(vs))
			}
			return nil
		})
		for _, pt := range written[i] {
			if pt.Firms != len(ids) || pt.Class != "cnc-5axis" || !pt.Start.Equal(start) {
				t.Errorf("hub %d: point %+v, want %d firms", i+1, pt, len(ids))
			}
			got := []float64{pt.P25, pt.P50, pt.P75}
			for j, q := range []float64{0.25, 0.5, 0.75} {
				if want := hdByIntegration(vs[pt.KPI], q); !near(got[j], want) {
					t.Errorf("hub %d: %s quartile %v = %v, want %v over all firms", i+1, pt.KPI, q, got[j], want)
				}
			}
		}
	}
	for _, h := range []*Hub{h1, h2} {
		collectortest.Eventually(t, 10*time.Second, func() error {
			if n := h.Pending(); n != 0 {
				return fmt.Errorf("%d contributions pending after the close", n)
			}
			return nil
		})
	}

	// Nothing raw is retained under the hubs' topics: a retained message
	// would reach a new subscriber before a marker published after it
	// subscribed.
	obs, err := client(t, brokerConfig(url, "shopfloor-hub", "pw-hub", p), "observer")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 100)
	if err := share.Wait(context.Background(), obs.Subscribe("shopfloor/v1/hub/#", 1, func(_ paho.Client, m paho.Message) { got <- m.Topic() }), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	const marker = "shopfloor/v1/hub/test/marker"
	if err := share.Wait(context.Background(), obs.Publish(marker, 1, false, []byte("m")), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case topic := <-got:
		if topic != marker {
			t.Errorf("retained on the broker: %s", topic)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the marker did not arrive")
	}
}
