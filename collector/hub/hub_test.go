package hub

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/share"
)

// hdByIntegration is the Harrell–Davis estimate computed another way: the
// Beta density integrated numerically over each value's share of [0, 1].
func hdByIntegration(values []float64, p float64) float64 {
	x := slices.Clone(values)
	slices.Sort(x)
	n := len(x)
	a, b := p*float64(n+1), (1-p)*float64(n+1)
	la, _ := math.Lgamma(a)
	lb, _ := math.Lgamma(b)
	lab, _ := math.Lgamma(a + b)
	pdf := func(t float64) float64 {
		if t <= 0 || t >= 1 {
			return 0
		}
		return math.Exp((a-1)*math.Log(t) + (b-1)*math.Log1p(-t) + lab - la - lb)
	}
	var sum float64
	for i := 0; i < n; i++ {
		lo, hi := float64(i)/float64(n), float64(i+1)/float64(n)
		const steps = 2000 // Simpson's rule
		h := (hi - lo) / steps
		w := pdf(lo) + pdf(hi)
		for j := 1; j < steps; j++ {
			f := 2.0
			if j%2 == 1 {
				f = 4
			}
			w += f * pdf(lo+float64(j)*h)
		}
		sum += w * h / 3 * x[i]
	}
	return sum
}

func TestQuantileMatchesIntegration(t *testing.T) {
	sets := [][]float64{
		{0.61, 0.55, 0.72, 0.48, 0.66},
		{0.61, 0.55, 0.72, 0.48, 0.66, 0.59, 0.7, 0.51},
		{3000, 1200, 900, 2400, 3600, 60},
	}
	for _, vs := range sets {
		for _, p := range []float64{0.25, 0.5, 0.75} {
			got, want := Quantile(vs, p), hdByIntegration(vs, p)
			if math.Abs(got-want) > 1e-6*math.Max(1, math.Abs(want)) {
				t.Errorf("Quantile(%v, %v) = %v, integration %v", vs, p, got, want)
			}
		}
	}
}

func contribs(n int, class string, start time.Time, kpi func(i int) map[string]float64) map[string]share.Contribution {
	out := map[string]share.Contribution{}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%032x", i+1)
		out[id] = share.Contribution{Version: 1, Contributor: id, Class: class, Period: "1h", Start: start, Machines: 2, KPIs: kpi(i)}
	}
	return out
}

// TestAggregateK: four firms are not published, five are, and no
// published value is a minimum, maximum or any single firm's value.
func TestAggregateK(t *testing.T) {
	start := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	oee := func(i int) map[string]float64 {
		// Uneven values: for evenly spaced ones any symmetric estimator's
		// median coincides with the middle value.
		return map[string]float64{"oee": []float64{0.41, 0.47, 0.52, 0.61, 0.74}[i%5], "mtbf_s": []float64{300, 900, 1000, 2400, 3500}[i%5]}
	}
	points, skipped := Aggregate(contribs(4, "cnc-lathe", start, oee), 5, 0, seedFrom(1))
	if len(points) != 0 || len(skipped) != 2 {
		t.Fatalf("4 firms: points %v skipped %v, want none published", points, skipped)
	}
	points, _ = Aggregate(contribs(5, "cnc-lathe", start, oee), 5, 0, seedFrom(1))
	if len(points) != 2 {
		t.Fatalf("5 firms: points %v", points)
	}
	for _, p := range points {
		if p.Firms != 5 || p.Class != "cnc-lathe" || p.Period != "1h" || !p.Start.Equal(start) {
			t.Errorf("point %+v", p)
		}
		for i := 0; i < 5; i++ {
			v := oee(i)[p.KPI]
			for _, q := range []float64{p.P25, p.P50, p.P75} {
				if math.Abs(q-v) < 1e-9 {
					t.Errorf("%s quartile %v is firm %d's value", p.KPI, q, i)
				}
			}
		}
		if !(p.P25 < p.P50 && p.P50 < p.P75) {
			t.Errorf("quartiles out of order: %+v", p)
		}
	}
}

func TestAggregateNoise(t *testing.T) {
	start := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	c := contribs(6, "cnc-lathe", start, func(i int) map[string]float64 { return map[string]float64{"quality": 0.9 + 0.02*float64(i)} })
	plain, _ := Aggregate(c, 5, 0, seedFrom(1))
	noisy, _ := Aggregate(c, 5, 1, seedFrom(2))
	if plain[0].P50 == noisy[0].P50 {
		t.Error("epsilon 1 added no noise")
	}
	if noisy[0].P75 > 1 || noisy[0].P25 < 0 || noisy[0].P25 > noisy[0].P50 || noisy[0].P50 > noisy[0].P75 {
		t.Errorf("noisy quartiles out of range or order: %+v", noisy[0])
	}
}

type memWriter struct {
	mu     sync.Mutex
	points []Point
	fail   error
}

func (m *memWriter) WritePoints(_ context.Context, ps []Point) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.points = append(m.points, ps...)
	return nil
}

func payload(t testing.TB, c share.Contribution) []byte {
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHubAcceptReplaceClose: a later contribution of a firm replaces its
// earlier one, the period closes after grace and quiet, a failed write
// keeps it open, and a contribution after the close is refused as late.
func TestHubAcceptReplaceClose(t *testing.T) {
	start := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	now := start.Add(70 * time.Minute)
	w := &memWriter{fail: errors.New("influx down")}
	h, err := New(Config{DataDir: t.TempDir(), Broker: share.BrokerConfig{URL: "tcp://127.0.0.1:1"},
		InfluxDB: InfluxConfig{URL: "http://127.0.0.1:1", Bucket: "cluster"}, Grace: 5 * time.Minute, Quiet: time.Minute},
		nil, WithWriter(w), WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	cs := contribs(5, "cnc-5axis", start, func(i int) map[string]float64 { return map[string]float64{"oee": 0.5} })
	for _, c := range cs {
		if err := h.Accept(share.Topic("shopfloor/v1", c.Contributor, c.Class), payload(t, c)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range cs { // the replacement
		c.KPIs = map[string]float64{"oee": 0.6}
		if err := h.Accept(share.Topic("shopfloor/v1", c.Contributor, c.Class), payload(t, c)); err != nil {
			t.Fatal(err)
		}
	}
	if h.Pending() != 5 {
		t.Fatalf("pending %d, want 5", h.Pending())
	}
	h.closeDue(context.Background())
	if h.Pending() != 5 {
		t.Fatal("period closed although the write failed")
	}
	now = now.Add(2 * time.Minute)
	w.fail = nil
	h.closeDue(context.Background())
	if len(w.points) != 1 || w.points[0].Firms != 5 || math.Abs(w.points[0].P50-0.6) > 1e-9 {
		t.Fatalf("points %+v", w.points)
	}
	if h.Pending() != 0 {
		t.Fatalf("pending %d after the close", h.Pending())
	}
	for _, c := range cs {
		var pe *ParseError
		if err := h.Accept(share.Topic("shopfloor/v1", c.Contributor, c.Class), payload(t, c)); !errors.As(err, &pe) || pe.Reason != "late" {
			t.Errorf("late contribution: %v", err)
		}
		break
	}
}

func TestParse(t *testing.T) {
	now := time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC)
	id := strings.Repeat("ab", 16)
	good := share.Contribution{Version: 1, Contributor: id, Class: "cnc-lathe", Period: "1h",
		Start: time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC), Machines: 3, KPIs: map[string]float64{"oee": 0.6, "mtbf_s": 1200}}
	topic := share.Topic("shopfloor/v1", id, "cnc-lathe")
	if _, err := Parse("shopfloor/v1", topic, payload(t, good), now, 48*time.Hour); err != nil {
		t.Fatalf("good contribution refused: %v", err)
	}
	edit := func(f func(*share.Contribution)) []byte {
		c := good
		c.KPIs = map[string]float64{"oee": 0.6}
		f(&c)
		return payload(t, c)
	}
	tests := []struct {
		name, topic string
		payload     []byte
	}{
		{"other pseudonym in payload", topic, edit(func(c *share.Contribution) { c.Contributor = strings.Repeat("cd", 16) })},
		{"other class in payload", topic, edit(func(c *share.Contribution) { c.Class = "robot-welding" })},
		{"oee above 1", topic, edit(func(c *share.Contribution) { c.KPIs["oee"] = 1.2 })},
		{"negative mttr", topic, edit(func(c *share.Contribution) { c.KPIs["mttr_s"] = -1 })},
		{"unknown kpi", topic, edit(func(c *share.Contribution) { c.KPIs["firm_name"] = 1 })},
		{"no kpis", topic, edit(func(c *share.Contribution) { c.KPIs = nil })},
		{"not a whole hour", topic, edit(func(c *share.Contribution) { c.Start = c.Start.Add(time.Minute) })},
		{"period not ended", topic, edit(func(c *share.Contribution) { c.Start = now })},
		{"too old", topic, edit(func(c *share.Contribution) { c.Start = now.Add(-72 * time.Hour) })},
		{"day period", topic, edit(func(c *share.Contribution) { c.Period = "day" })},
		{"no machines", topic, edit(func(c *share.Contribution) { c.Machines = 0 })},
		{"short pseudonym", "shopfloor/v1/contrib/abc/cnc-lathe", payload(t, good)},
		{"wrong prefix", "other/contrib/" + id + "/cnc-lathe", payload(t, good)},
		{"extra field", topic, []byte(strings.Replace(string(payload(t, good)), `"v":1`, `"v":1,"site":"Bakker"`, 1))},
		{"trailing data", topic, append(payload(t, good), []byte(` {}`)...)},
		{"not json", topic, []byte("oee=0.6")},
	}
	for _, tt := range tests {
		if _, err := Parse("shopfloor/v1", tt.topic, tt.payload, now, 48*time.Hour); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

// FuzzParseContribution: the hub's parser takes any bytes from the network without
// panicking, and whatever it accepts is within the documented ranges.
func FuzzParseContribution(f *testing.F) {
	id := strings.Repeat("0f", 16)
	f.Add("shopfloor/v1/contrib/"+id+"/cnc-lathe", []byte(`{"v":1,"contributor":"`+id+`","class":"cnc-lathe","period":"1h","start":"2026-11-02T10:00:00Z","machines":3,"kpis":{"oee":0.6,"mtbf_s":1200}}`))
	f.Add("shopfloor/v1/contrib/"+id+"/cnc-lathe", []byte(`{"v":1,"kpis":{"oee":1e999}}`))
	f.Add("shopfloor/v1/contrib//", []byte(`null`))
	f.Add("shopfloor/v1/contrib/"+id+"/a/b", []byte(`{"start":"2026-11-02T10:00:00+01:00"}`))
	now := time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, topic string, data []byte) {
		c, err := Parse("shopfloor/v1", topic, data, now, 48*time.Hour)
		if err != nil {
			return
		}
		if !share.ValidClass(c.Class) || !validPseudonym(c.Contributor) || len(c.KPIs) == 0 || c.Start.Location() != time.UTC {
			t.Fatalf("accepted %+v", c)
		}
		for k, v := range c.KPIs {
			if checkKPI(k, v) != nil {
				t.Fatalf("accepted %s = %v", k, v)
			}
		}
	})
}

// seedFrom makes a deterministic generator, for tests and fuzzing.
func seedFrom(n uint64) *rand.Rand {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], n)
	return rand.New(rand.NewChaCha8(seed))
}
