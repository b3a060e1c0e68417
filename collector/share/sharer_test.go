package share

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/kpi"
)

type capture struct {
	mu   sync.Mutex
	msgs map[string][]byte // topic -> last payload
	all  []string
}

func (c *capture) Publish(_ context.Context, topic string, payload []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.msgs == nil {
		c.msgs = map[string][]byte{}
	}
	c.msgs[topic] = append([]byte(nil), payload...)
	c.all = append(c.all, topic)
	return nil
}

func (c *capture) Close() {}

func (c *capture) get(topic string) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.msgs[topic]
}

func testConfig() Config {
	return Config{Enabled: true, Settle: time.Minute,
		Classes: map[string]string{"cnc-1": "cnc-5axis", "cnc-2": "cnc-5axis", "lathe-1": "cnc-lathe"},
		Broker:  BrokerConfig{URL: "tcp://127.0.0.1:1"}}
}

var hour = time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)

// feedHour drives a real KPI engine through 08:00-09:02 for a machine:
// running, with an alarm from downFrom to downFrom+10m, a good part every
// 75 s while running, and ideal cycle time 60 s.
func feedHour(e *kpi.Engine, a collector.Asset, downFrom time.Duration, until time.Duration) {
	good := int64(0)
	for t := time.Duration(0); t <= until; t += 15 * time.Second {
		state := "running"
		if t >= downFrom && t < downFrom+10*time.Minute {
			state = "alarm"
		}
		if t > 0 && t%(75*time.Second) == 0 && state == "running" {
			good++
		}
		at := hour.Add(t)
		e.Observe([]collector.Sample{
			{Asset: a, MachineType: "cnc", Signal: collector.SignalState, Value: collector.String(state), SourceTime: at},
			{Asset: a, MachineType: "cnc", Signal: collector.SignalPartCountGood, Value: collector.Int(good), SourceTime: at},
		})
	}
}

func newEngine(t *testing.T, s *Sharer, rows *[]collector.Sample) *kpi.Engine {
	t.Helper()
	e, err := kpi.New(kpi.Config{Enabled: true, Lateness: 30 * time.Second, MaxGap: 5 * time.Minute,
		Shifts: []kpi.ShiftConfig{{Name: "day", Start: "00:00", End: "24:00"}}, IdealCycleTime: time.Minute}, "",
		func(out []collector.Sample) error {
			s.Observe(out)
			*rows = append(*rows, out...)
			return nil
		}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestSharerContributionFromEngine: the hour is shared only once every
// machine's hour is final, as the mean of the machines' final hour rows;
// a machine without a class is never shared, and the payload holds
// nothing but the pseudonym, class, period, count and KPIs.
func TestSharerContributionFromEngine(t *testing.T) {
	dir := t.TempDir()
	pub := &capture{}
	now := hour.Add(90 * time.Minute)
	var local []collector.Sample
	s, err := New(testConfig(), dir, nil, WithPublisher(pub), WithClock(func() time.Time { return now }),
		WithLocalCopy(func(rows []collector.Sample) error { local = append(local, rows...); return nil }))
	if err != nil {
		t.Fatal(err)
	}
	var rows []collector.Sample
	e := newEngine(t, s, &rows)
	m1 := collector.Asset{Site: "Bakker Metaal", Line: "hal-2", Machine: "cnc-1"}
	m2 := collector.Asset{Site: "Bakker Metaal", Line: "hal-2", Machine: "cnc-2"}
	m3 := collector.Asset{Site: "Bakker Metaal", Line: "hal-2", Machine: "secret-prototype"}
	feedHour(e, m1, 20*time.Minute, 62*time.Minute)
	feedHour(e, m2, 40*time.Minute, 45*time.Minute) // not final yet
	feedHour(e, m3, 0, 62*time.Minute)

	if err := s.check(); err != nil {
		t.Fatal(err)
	}
	if n := s.q.Stats().Records; n != 0 || len(local) != 0 {
		t.Fatalf("%d contributions queued and %d local rows while cnc-2's hour is open, want 0", n, len(local))
	}
	feedHour(e, m2, 40*time.Minute, 62*time.Minute)
	if err := s.check(); err != nil {
		t.Fatal(err)
	}
	if n := s.q.Stats().Records; n != 1 {
		t.Fatalf("%d contributions queued, want 1", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	topic := Topic(DefaultTopicPrefix, s.Pseudonym(), "cnc-5axis")
	deadline := time.Now().Add(10 * time.Second)
	for pub.get(topic) == nil {
		if time.Now().After(deadline) {
			t.Fatal("nothing published")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	payload := pub.get(topic)
	var c Contribution
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	// Both machines: run 3000 s, alarm 600 s, one failure, 40 parts... the
	// engine's own hour rows are the reference.
	want := map[string]float64{}
	for _, k := range KPIs {
		var sum float64
		n := 0
		for _, m := range []string{"cnc-1", "cnc-2"} {
			if v, ok := lastValue(rows, m, k); ok {
				sum += v
				n++
			}
		}
		if n > 0 {
			want[k] = Round(k, sum/float64(n))
		}
	}
	if c.Machines != 2 || c.Class != "cnc-5axis" || c.Period != "1h" || !c.Start.Equal(hour) || c.Contributor != s.Pseudonym() {
		t.Errorf("contribution %+v", c)
	}
	for k, w := range want {
		if c.KPIs[k] != w {
			t.Errorf("%s = %v, want %v", k, c.KPIs[k], w)
		}
	}
	if len(c.KPIs) != len(want) || c.KPIs[KPIOEE] == 0 || c.KPIs[KPIMTBF] == 0 {
		t.Errorf("kpis %v, want %v", c.KPIs, want)
	}
	for _, leak := range []string{"Bakker", "hal-2", "cnc-1", "cnc-2", "secret-prototype", "T09", "08:01", "2026-11-02T08:00:00.", "+0"} {
		if strings.Contains(string(payload)+topic, leak) {
			t.Errorf("%q leaks in %s %s", leak, topic, payload)
		}
	}
	if len(pub.all) != 1 {
		t.Errorf("published %v, want only the cnc-5axis contribution", pub.all)
	}
	// The firm's own KPI store gets the same numbers, under the class.
	gotLocal := map[string]float64{}
	for _, r := range local {
		if r.Window != LocalWindow || r.MachineType != "cnc-5axis" || r.Asset != (collector.Asset{}) || !r.SourceTime.Equal(hour) {
			t.Errorf("local row %+v, want window %s, class cnc-5axis, no asset, at %v", r, LocalWindow, hour)
		}
		gotLocal[r.Signal], _ = r.Value.AsFloat()
	}
	if len(gotLocal) != len(c.KPIs)+1 || gotLocal["machines"] != 2 {
		t.Errorf("local rows %v, want the %d KPIs and machines = 2", gotLocal, len(c.KPIs))
	}
	for k, v := range c.KPIs {
		if gotLocal[k] != v {
			t.Errorf("local %s = %v, shared %v", k, gotLocal[k], v)
		}
	}
	// The local log holds exactly what was sent.
	logged, err := os.ReadFile(filepath.Join(Dir(dir), LogFile))
	if err != nil {
		t.Fatal(err)
	}
	var line struct {
		Topic   string          `json:"topic"`
		Payload json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(logged, &line); err != nil || line.Topic != topic || string(line.Payload) != string(payload) {
		t.Errorf("local log %s (%v), want topic %s payload %s", logged, err, topic, payload)
	}
}

func lastValue(rows []collector.Sample, machine, field string) (float64, bool) {
	var v float64
	ok := false
	for _, r := range rows {
		if r.Window == "1h" && r.Asset.Machine == machine && r.Signal == field && r.SourceTime.Equal(hour) {
			v, _ = r.Value.AsFloat()
			ok = true
		}
	}
	return v, ok
}

// TestSharerRestartKeepsRows: the hour's rows survive a restart of the
// agent between the hour's last row and the contribution being due.
func TestSharerRestartKeepsRows(t *testing.T) {
	dir := t.TempDir()
	now := hour.Add(61 * time.Minute) // before end + settle
	clock := func() time.Time { return now }
	s, err := New(testConfig(), dir, nil, WithPublisher(&capture{}), WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	var rows []collector.Sample
	e := newEngine(t, s, &rows)
	feedHour(e, collector.Asset{Machine: "lathe-1"}, 10*time.Minute, 62*time.Minute)
	if err := s.check(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	now = hour.Add(2 * time.Hour)
	s2, err := New(testConfig(), dir, nil, WithPublisher(&capture{}), WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.Pseudonym() != s.Pseudonym() {
		t.Errorf("pseudonym changed across a restart")
	}
	if err := s2.check(); err != nil {
		t.Fatal(err)
	}
	if n := s2.q.Stats().Records; n != 1 {
		t.Fatalf("%d contributions queued after the restart, want 1", n)
	}
}

func TestPseudonym(t *testing.T) {
	dir := t.TempDir()
	a, err := PseudonymOf(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := PseudonymOf(dir)
	if a != b || len(a) != PseudonymLen {
		t.Errorf("pseudonyms %q %q", a, b)
	}
	fi, err := os.Stat(filepath.Join(Dir(dir), SecretFile))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Errorf("secret file %v %v", fi, err)
	}
	if other, _ := PseudonymOf(t.TempDir()); other == a {
		t.Error("two firms got the same pseudonym")
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{Enabled: true, Period: "day", Classes: map[string]string{"m": "Bakker Metaal"}}
	c.SetDefaults()
	err := c.Validate()
	for _, want := range []string{"period", "classes.m", "broker.url"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want a problem with %s", err, want)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("disabled config: %v", err)
	}
}

// TestSharerLocalCopyRetried: a local copy that fails (the pipeline is
// closed at shutdown) is written at the next check, without sending the
// contribution twice.
func TestSharerLocalCopyRetried(t *testing.T) {
	now := hour.Add(90 * time.Minute)
	fail := true
	var local []collector.Sample
	s, err := New(testConfig(), t.TempDir(), nil, WithPublisher(&capture{}), WithClock(func() time.Time { return now }),
		WithLocalCopy(func(rows []collector.Sample) error {
			if fail {
				return os.ErrClosed
			}
			local = append(local, rows...)
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	var rows []collector.Sample
	feedHour(newEngine(t, s, &rows), collector.Asset{Machine: "cnc-1"}, 20*time.Minute, 62*time.Minute)
	if err := s.check(); err == nil {
		t.Fatal("check hid the failed local copy")
	}
	fail = false
	for i := 0; i < 2; i++ {
		if err := s.check(); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.q.Stats().Records; n != 1 {
		t.Errorf("%d contributions queued, want 1", n)
	}
	machines := 0
	for _, r := range local {
		if r.Signal == "machines" {
			machines++
		}
	}
	if machines != 1 || len(local) < 2 {
		t.Errorf("local rows %+v, want the contribution's rows once", local)
	}
}
