package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/share"
)

func mirrorOf(t *testing.T, c share.Contribution, received time.Time) (string, []byte) {
	t.Helper()
	b, err := json.Marshal(Mirror{Received: received.UnixMilli(), Payload: payload(t, c)})
	if err != nil {
		t.Fatal(err)
	}
	return MirrorTopic("shopfloor/v1", DefaultGroup, c.Contributor, c.Class), b
}

// held is the OEE the hub keeps for a firm, and its received stamp.
func held(h *Hub, c share.Contribution) (float64, int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.groups[groupKey(c.Class, c.Period, c.Start)]
	if g == nil {
		return -1, 0
	}
	return g.Contributions[c.Contributor].KPIs["oee"], g.Received[c.Contributor]
}

func withOEE(c share.Contribution, oee float64) share.Contribution {
	c.KPIs = map[string]float64{"oee": oee}
	return c
}

func isReason(err error, reason string) bool {
	var pe *ParseError
	return errors.As(err, &pe) && pe.Reason == reason
}

// TestHubStampOrder: of one firm's contributions the one with the newest
// received stamp is kept, wherever it came from: an older mirror is
// refused as stale, a newer one replaces, a hub's own mirror coming back
// changes nothing, equal stamps are ordered the same on every hub, a
// mirror is never mirrored again, and the stamps survive a restart.
func TestHubStampOrder(t *testing.T) {
	start := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	now := start.Add(70 * time.Minute)
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Broker: share.BrokerConfig{URL: "tcp://127.0.0.1:1"},
		InfluxDB: InfluxConfig{URL: "http://127.0.0.1:1", Bucket: "cluster"}, Quiet: time.Hour}
	h, err := New(cfg, nil, WithWriter(&memWriter{}), WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	c := contribs(1, "cnc-lathe", start, func(int) map[string]float64 { return nil })["00000000000000000000000000000001"]
	direct := share.Topic("shopfloor/v1", c.Contributor, c.Class)

	// A direct contribution is stamped with the hub's clock and mirrored
	// as it came.
	first := payload(t, withOEE(c, 0.5))
	topic, mirror, err := h.receive(direct, first)
	if err != nil {
		t.Fatal(err)
	}
	if want := "shopfloor/v1/hub/shopfloor-hub/contrib/" + c.Contributor + "/cnc-lathe"; topic != want {
		t.Errorf("mirror topic %q, want %q", topic, want)
	}
	var env Mirror
	if err := json.Unmarshal(mirror, &env); err != nil || env.Received != now.UnixMilli() || !bytes.Equal(env.Payload, first) {
		t.Fatalf("mirror %s (%v), want received %d and the payload as sent", mirror, err, now.UnixMilli())
	}
	if oee, stamp := held(h, c); oee != 0.5 || stamp != now.UnixMilli() {
		t.Fatalf("held %v at %d", oee, stamp)
	}

	// Its own mirror coming back: harmless, neither counted nor refused.
	if topic2, m2, err := h.receive(topic, mirror); err != nil || m2 != nil || topic2 != "" {
		t.Fatalf("own mirror: %q %s %v", topic2, m2, err)
	}
	if got := h.Accepted(); got[SourceDirect] != 1 || got[SourceMirror] != 0 {
		t.Errorf("accepted %v after the own mirror, want 1 direct", got)
	}

	// Another hub took an earlier replacement: older stamp, ignored.
	mt, mp := mirrorOf(t, withOEE(c, 0.7), now.Add(-time.Second))
	if err := h.Accept(mt, mp); !isReason(err, "stale") {
		t.Fatalf("older mirror: %v, want refused as stale", err)
	}
	if oee, _ := held(h, c); oee != 0.5 {
		t.Fatalf("older mirror replaced the contribution: held %v", oee)
	}
	// A later one, not mirrored again.
	mt, mp = mirrorOf(t, withOEE(c, 0.8), now.Add(time.Second))
	if _, again, err := h.receive(mt, mp); err != nil || again != nil {
		t.Fatalf("newer mirror: %v, mirrored again: %s", err, again)
	}
	if oee, stamp := held(h, c); oee != 0.8 || stamp != now.Add(time.Second).UnixMilli() {
		t.Fatalf("newer mirror: held %v at %d", oee, stamp)
	}
	// A direct one stamped before that (this hub's clock is behind):
	// stale too, and not passed on.
	if _, again, err := h.receive(direct, payload(t, withOEE(c, 0.3))); !isReason(err, "stale") || again != nil {
		t.Fatalf("direct contribution older than the held one: %v, mirror %s", err, again)
	}
	now = now.Add(2 * time.Second)
	if err := h.Accept(direct, payload(t, withOEE(c, 0.6))); err != nil {
		t.Fatal(err)
	}
	if oee, _ := held(h, c); oee != 0.6 {
		t.Fatalf("newer direct contribution: held %v", oee)
	}
	if got, want := h.Refused(), map[string]int64{"stale": 2}; len(got) != 1 || got["stale"] != want["stale"] {
		t.Errorf("refused %v, want %v", got, want)
	}
	if got := h.Accepted(); got[SourceDirect] != 2 || got[SourceMirror] != 1 {
		t.Errorf("accepted %v, want 2 direct and 1 mirror", got)
	}

	// Equal stamps: two hubs that got the two mirrors in either order
	// keep the same contribution.
	tie := now.Add(time.Minute)
	at, ap := mirrorOf(t, withOEE(c, 0.41), tie)
	bt, bp := mirrorOf(t, withOEE(c, 0.42), tie)
	if err := h.Accept(at, ap); err != nil {
		t.Fatal(err)
	}
	errB := h.Accept(bt, bp)
	oeeAB, _ := held(h, c)
	h2, err := New(Config{DataDir: t.TempDir(), Broker: cfg.Broker, InfluxDB: cfg.InfluxDB, Quiet: time.Hour}, nil,
		WithWriter(&memWriter{}), WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.Accept(bt, bp); err != nil {
		t.Fatal(err)
	}
	errA := h2.Accept(at, ap)
	if oeeBA, _ := held(h2, c); oeeBA != oeeAB || (errA == nil) == (errB == nil) {
		t.Errorf("equal stamps: one hub kept %v, the other %v (refusals %v, %v)", oeeAB, oeeBA, errB, errA)
	}

	// After a restart the stamps still order.
	h3, err := New(cfg, nil, WithWriter(&memWriter{}), WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	if oee, stamp := held(h3, c); oee != oeeAB || stamp != tie.UnixMilli() {
		t.Fatalf("restored %v at %d, want %v at %d", oee, stamp, oeeAB, tie.UnixMilli())
	}
	mt, mp = mirrorOf(t, withOEE(c, 0.9), tie.Add(-time.Millisecond))
	if err := h3.Accept(mt, mp); !isReason(err, "stale") {
		t.Errorf("after a restart an older mirror: %v, want stale", err)
	}
}

// TestHubNoiseSameSecret: hubs with the same secret file and the same
// contributions write identical noisy points, whatever order the
// contributions came in; a hub with another secret writes other noise;
// epsilon 0 writes the plain quartiles.
func TestHubNoiseSameSecret(t *testing.T) {
	start := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	now := start.Add(70 * time.Minute)
	cs := contribs(7, "cnc-5axis", start, func(i int) map[string]float64 {
		return map[string]float64{"oee": 0.43 + 0.061*float64(i), "mtbf_s": 900 + 311*float64(i)}
	})
	ids := make([]string, 0, len(cs))
	for id := range cs {
		ids = append(ids, id)
	}
	run := func(dir string, epsilon float64, reverse bool) []Point {
		t.Helper()
		w := &memWriter{}
		h, err := New(Config{DataDir: dir, Broker: share.BrokerConfig{URL: "tcp://127.0.0.1:1"},
			InfluxDB: InfluxConfig{URL: "http://127.0.0.1:1", Bucket: "cluster"},
			Grace:    5 * time.Minute, Quiet: time.Minute, Epsilon: epsilon},
			nil, WithWriter(w), WithClock(func() time.Time { return now }))
		if err != nil {
			t.Fatal(err)
		}
		for i := range ids {
			id := ids[i]
			if reverse {
				id = ids[len(ids)-1-i]
			}
			if err := h.Accept(share.Topic("shopfloor/v1", id, "cnc-5axis"), payload(t, cs[id])); err != nil {
				t.Fatal(err)
			}
		}
		save := now
		now = now.Add(10 * time.Minute)
		h.closeDue(context.Background())
		now = save
		if len(w.points) != 2 {
			t.Fatalf("points %+v", w.points)
		}
		return w.points
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	a := run(dirA, 1, false)
	secret, err := os.ReadFile(filepath.Join(dirA, share.SecretFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dirA, share.SecretFile)); len(secret) != 32 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("hub secret: %d bytes, mode %v", len(secret), fi.Mode())
	}
	if err := os.WriteFile(filepath.Join(dirB, share.SecretFile), secret, 0o600); err != nil {
		t.Fatal(err)
	}
	b := run(dirB, 1, true)
	other := run(t.TempDir(), 1, false)
	plain := run(t.TempDir(), 0, false)
	byKPI := func(ps []Point) map[string]Point {
		m := map[string]Point{}
		for _, p := range ps {
			m[p.KPI] = p
		}
		return m
	}
	pa, pb, po, pp := byKPI(a), byKPI(b), byKPI(other), byKPI(plain)
	for _, kpi := range []string{"oee", "mtbf_s"} {
		if pa[kpi] != pb[kpi] {
			t.Errorf("%s: same secret, same contributions, different points:\n%+v\n%+v", kpi, pa[kpi], pb[kpi])
		}
		if pa[kpi].P50 == po[kpi].P50 || pa[kpi].P25 == po[kpi].P25 {
			t.Errorf("%s: another secret drew the same noise: %+v", kpi, po[kpi])
		}
		if pa[kpi].P50 == pp[kpi].P50 {
			t.Errorf("%s: epsilon 1 added no noise", kpi)
		}
		var vs []float64
		for _, c := range cs {
			vs = append(vs, c.KPIs[kpi])
		}
		for i, q := range []float64{0.25, 0.5, 0.75} {
			got := []float64{pp[kpi].P25, pp[kpi].P50, pp[kpi].P75}[i]
			if want := hdByIntegration(vs, q); !near(got, want) {
				t.Errorf("%s epsilon 0: quartile %v = %v, want %v", kpi, q, got, want)
			}
		}
	}
}

func near(a, b float64) bool {
	d := a - b
	if d < 0 {
		d = -d
	}
	return d <= 1e-6*max(1, b, -b)
}

func TestParseMirror(t *testing.T) {
	now := time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC)
	id := strings.Repeat("ab", 16)
	good := share.Contribution{Version: 1, Contributor: id, Class: "cnc-lathe", Period: "1h",
		Start: time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC), Machines: 3, KPIs: map[string]float64{"oee": 0.6}}
	topic := MirrorTopic("shopfloor/v1", "g", id, "cnc-lathe")
	env := func(received int64, p []byte) []byte {
		b, _ := json.Marshal(Mirror{Received: received, Payload: p})
		return b
	}
	c, stamp, err := ParseMirror("shopfloor/v1", "g", topic, env(1234, payload(t, good)), now, 48*time.Hour)
	if err != nil || stamp != 1234 || c.Contributor != id || c.KPIs["oee"] != 0.6 {
		t.Fatalf("good mirror: %+v %d %v", c, stamp, err)
	}
	other := good
	other.Contributor = strings.Repeat("cd", 16)
	tests := []struct {
		name, topic string
		payload     []byte
	}{
		{"other group", MirrorTopic("shopfloor/v1", "h", id, "cnc-lathe"), env(1, payload(t, good))},
		{"firm topic", share.Topic("shopfloor/v1", id, "cnc-lathe"), env(1, payload(t, good))},
		{"no stamp", topic, env(0, payload(t, good))},
		{"no payload", topic, []byte(`{"received":1}`)},
		{"pseudonym differs from topic", topic, env(1, payload(t, other))},
		{"extra field", topic, []byte(`{"received":1,"hub":"x","payload":` + string(payload(t, good)) + `}`)},
		{"payload with an extra field", topic, env(1, []byte(strings.Replace(string(payload(t, good)), `"v":1`, `"v":1,"site":"Bakker"`, 1)))},
		{"oversized", topic, env(1, []byte(`"`+strings.Repeat("x", MaxPayloadBytes+mirrorOverhead)+`"`))},
		{"not json", topic, []byte("received=1")},
	}
	for _, tt := range tests {
		if _, _, err := ParseMirror("shopfloor/v1", "g", tt.topic, tt.payload, now, 48*time.Hour); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}
