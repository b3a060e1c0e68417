//go:build integration

package main

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
	"github.com/noordoostpolder/shopfloor/collector/share"
)

// recorder is a TCP proxy in front of the cluster broker that keeps every
// byte the agents send through it.
type recorder struct {
	ln    net.Listener
	mu    sync.Mutex
	buf   bytes.Buffer
	conns []net.Conn
}

func newRecorder(t *testing.T, target string) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, c, up)
			r.mu.Unlock()
			go func() { _, _ = io.Copy(up, io.TeeReader(c, r)); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.conns {
			c.Close()
		}
	})
	return r
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.buf.Bytes())
}

func (r *recorder) url() string { return "tcp://" + r.ln.Addr().String() }

// mosquittoPasswordLine is a Mosquitto 2 password file line ("$7$").
func mosquittoPasswordLine(t *testing.T, user, password string) string {
	t.Helper()
	salt := make([]byte, 12)
	if _, err := rand.Read(salt); err != nil {
		t.Fatal(err)
	}
	hash, err := pbkdf2.Key(sha512.New, password, salt, 101, sha512.Size)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s:$7$101$%s$%s\n", user, base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(hash))
}

type clusterMachine struct{ line, name, class string }

type clusterFirm struct {
	name, slug, site string
	data, pseudonym  string
	password         string
	machines         []clusterMachine
	agent            *agentProc
}

// machineHour is one machine's hour from start to start+62m, a message
// every 15 s, shaped by seed: an alarm (or none), a cycle time, a reject
// rate and a power draw of its own.
func machineHour(topic string, start time.Time, seed uint64) []collectortest.Message {
	r := mrand.New(mrand.NewPCG(seed, 0x5eed))
	alarmAt := time.Duration(5+r.IntN(40)) * time.Minute
	alarmLen := time.Duration(2+r.IntN(10)) * time.Minute
	if r.IntN(5) == 0 {
		alarmLen = 0
	}
	idleAt := time.Duration(48+r.IntN(6)) * time.Minute
	idleLen := time.Duration(r.IntN(4)) * time.Minute
	partEvery := 4 + r.IntN(4) // ticks of 15 s: 60 s to 105 s, ideal is 60 s
	rejectEvery := 5 + r.IntN(15)
	powerW := 3000 + float64(r.IntN(6000))
	var msgs []collectortest.Message
	good, reject, parts, energy := 0, 0, 0, 0.0
	for i := 0; i <= 62*4; i++ {
		at := time.Duration(i) * 15 * time.Second
		state := "running"
		switch {
		case at >= alarmAt && at < alarmAt+alarmLen:
			state = "alarm"
		case at >= idleAt && at < idleAt+idleLen:
			state = "idle"
		}
		if state == "running" {
			if i > 0 && i%partEvery == 0 {
				parts++
				if parts%rejectEvery == 0 {
					reject++
				} else {
					good++
				}
			}
			energy += powerW * 15 / 3600
		}
		msgs = append(msgs, collectortest.Message{Topic: topic, Payload: fmt.Sprintf(
			`{"ts":%d,"state":%q,"part_count":%d,"reject_count":%d,"energy":%.3f}`,
			start.Add(at).UnixMilli(), state, good, reject, energy)})
	}
	return msgs
}

const firmAgentConfig = `agent:
  data_dir: ${SHOPFLOOR_DATA_DIR}
  http:
    listen: ${SHOPFLOOR_HTTP}
sources:
  - name: plant
    mqtt:
      url: ${MQTT_URL}
      client_id: agent-{{slug}}
      subscriptions:
        - topic: {{slug}}/+/+/telemetry
          qos: 1
          json: {time_field: ts, time_format: unix_ms}
    asset:
      site: {{site}}
      machine_type: cnc
      from_origin: ["{{slug}}/{line}/{machine}/telemetry"]
    mapping:
      - {match: part_count, signal: part_count_good}
      - {match: reject_count, signal: part_count_reject}
      - {match: energy, signal: energy_wh}
      - {match: state, signal: state}
sink:
  influxdb:
    url: ${INFLUX_URL}
    bucket: ${INFLUX_BUCKET}
kpi:
  enabled: true
  time_zone: UTC
  lateness: 30s
  max_gap: 5m
  shifts: [{name: day, start: "00:00", end: "24:00"}]
  ideal_cycle_time: 60s
share:
  enabled: true
  settle: 1s
  max_wait: 24h
  classes: {{classes}}
  broker:
    url: {{cluster}}
    username: {{pseudonym}}
    password: {{password}}
`

// hdQuartile is the Harrell–Davis quantile, computed here by integrating
// the Beta density numerically, independently of collector/hub.
func hdQuartile(values []float64, p float64) float64 {
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
	for i := range x {
		lo, hi := float64(i)/float64(n), float64(i+1)/float64(n)
		const steps = 4000
		h := (hi - lo) / steps
		w := pdf(lo) + pdf(hi)
		for j := 1; j < steps; j++ {
			w += float64(2+2*(j%2)) * pdf(lo+float64(j)*h)
		}
		sum += w * h / 3 * x[i]
	}
	return sum
}

func roundKPI(kpi string, v float64) float64 {
	if kpi == "oee" || kpi == "availability" || kpi == "performance" || kpi == "quality" {
		return math.Round(v*1e4) / 1e4
	}
	return math.Round(v*10) / 10
}

// TestClusterBenchmarkEightFirms is the whole cluster: eight agents (eight
// firms, each its own machines and seeds) share through the real cluster
// Mosquitto, with the shipped ACL and a user per pseudonym, to `shopfloor
// hub`, which writes the benchmark to a real InfluxDB. The benchmark rows
// match quartiles computed here from each firm's own kpi rows; the class
// four firms share is not published, the one five share is; and every
// byte the agents sent to the cluster broker holds no firm, site, line or
// machine name and no time finer than the hour.
func TestClusterBenchmarkEightFirms(t *testing.T) {
	plant, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	names := []string{"Bakker Metaal", "De Vries Precisie", "Jansen Lasrobots", "Visser CNC",
		"Smit Draaiwerk", "Mulder Techniek", "Bos Machinebouw", "Dekker Industrie"}
	dir := t.TempDir()
	var firms []*clusterFirm
	var passwd strings.Builder
	for i, name := range names {
		slug := strings.ToLower(strings.Fields(name)[len(strings.Fields(name))-2])
		f := &clusterFirm{name: name, slug: slug, site: slug + "-emmeloord", data: filepath.Join(dir, slug, "data")}
		secret, err := share.LoadOrCreateSecret(share.Dir(f.data))
		if err != nil {
			t.Fatal(err)
		}
		f.pseudonym = share.Pseudonym(secret)
		// A password of its own that names nothing: CONNECT carries it.
		f.password = fmt.Sprintf("%x", secret[:8])
		passwd.WriteString(mosquittoPasswordLine(t, f.pseudonym, f.password))
		line := slug + "-hal1"
		for m := 0; m < 1+i%3; m++ {
			f.machines = append(f.machines, clusterMachine{line, fmt.Sprintf("%s-dmg%d", slug, m+1), "cnc-5axis"})
		}
		if i < 5 {
			f.machines = append(f.machines, clusterMachine{slug + "-hal2", slug + "-lathe1", "cnc-lathe"})
		}
		if i < 4 {
			f.machines = append(f.machines, clusterMachine{slug + "-hal2", slug + "-weld1", "robot-welding"})
		}
		if i == 0 {
			f.machines = append(f.machines, clusterMachine{line, slug + "-prototype", ""}) // never shared
		}
		collectortest.CreateDatabase(t, influx.URL(), slug)
		firms = append(firms, f)
	}
	passwd.WriteString(mosquittoPasswordLine(t, "shopfloor-hub", "pw-hub"))
	pwFile := filepath.Join(dir, "passwd")
	if err := os.WriteFile(pwFile, []byte(passwd.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	acl, _ := filepath.Abs("../../deploy/cluster/acl")
	cluster := collectortest.Mosquitto(t, "allow_anonymous false", "password_file "+pwFile, "acl_file "+acl)
	rec := newRecorder(t, strings.TrimPrefix(cluster.URL(), "tcp://"))
	collectortest.CreateDatabase(t, influx.URL(), "cluster")

	hub := startHubProc(t, filepath.Join(dir, "hub"), fmt.Sprintf(`hub:
  data_dir: %s
  broker: {url: %s, username: shopfloor-hub, password: pw-hub}
  influxdb: {url: %s, bucket: cluster}
  k: 5
  grace: 1s
  quiet: 10s
log: {level: debug}
`, filepath.Join(dir, "hub", "data"), cluster.URL(), influx.URL()))

	for _, f := range firms {
		classes := map[string]string{}
		for _, m := range f.machines {
			if m.class != "" {
				classes[m.name] = m.class
			}
		}
		cj, _ := json.Marshal(classes)
		conf := strings.NewReplacer("{{slug}}", f.slug, "{{site}}", f.site, "{{classes}}", string(cj),
			"{{cluster}}", rec.url(), "{{pseudonym}}", f.pseudonym, "{{password}}", f.password).Replace(firmAgentConfig)
		path := filepath.Join(dir, f.slug, "agent.yaml")
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		f.agent = startFirmAgent(t, path, f.data, plant, influx, f.slug)
	}

	// Phase 1: every machine's hour up to its last minute, so all agents
	// are at the same point; phase 2 then closes every hour at once.
	start := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
	pub := collectortest.Publisher(t, plant.URL())
	var phase1, phase2 []collectortest.Message
	for i, f := range firms {
		for j, m := range f.machines {
			msgs := machineHour(fmt.Sprintf("%s/%s/%s/telemetry", f.slug, m.line, m.name), start, uint64(100*i+j+1))
			cut := 59*4 + 3 // up to hh:59:30, so minute 58 is final and 59 is not
			phase1, phase2 = append(phase1, msgs[:cut]...), append(phase2, msgs[cut:]...)
		}
	}
	collectortest.Publish(t, pub, phase1...)
	for _, f := range firms {
		collectortest.Eventually(t, 60*time.Second, func() error {
			series, err := collectortest.QueryErr(influx.URL(), f.slug, fmt.Sprintf(
				`SELECT run_s FROM kpi WHERE "window" = '1m' AND machine != '' AND time = '%s' GROUP BY machine`,
				start.Add(58*time.Minute).Format(time.RFC3339)))
			if err != nil || len(series) != len(f.machines) {
				dbg, _ := collectortest.QueryErr(influx.URL(), f.slug, `SELECT count(*) FROM /.*/ GROUP BY "window"`)
				return fmt.Errorf("%s: %d of %d machines at minute 58 (%v) %v", f.slug, len(series), len(f.machines), err, dbg)
			}
			return nil
		})
	}
	collectortest.Publish(t, pub, phase2...)

	// Expected: per class, each firm's mean of its machines' hour KPIs,
	// from the firm's own database, then the quartiles over firms.
	kpis := []string{"oee", "availability", "performance", "quality", "mtbf_s", "mttr_s", "energy_per_good_part_wh"}
	expected := func() (map[string]map[string][]float64, error) {
		byClass := map[string]map[string][]float64{} // class -> kpi -> per-firm values
		for _, f := range firms {
			series, err := collectortest.QueryErr(influx.URL(), f.slug, fmt.Sprintf(
				`SELECT %s FROM kpi WHERE "window" = '1h' AND machine != '' AND time = '%s' GROUP BY machine`,
				quoteAll(kpis), start.Format(time.RFC3339)))
			if err != nil {
				return nil, err
			}
			sums := map[string]map[string][]float64{}
			for _, s := range series {
				class := ""
				for _, m := range f.machines {
					if m.name == s.Tags["machine"] {
						class = m.class
					}
				}
				if class == "" {
					continue
				}
				if sums[class] == nil {
					sums[class] = map[string][]float64{}
				}
				for i, c := range s.Columns[1:] {
					if n, ok := s.Values[0][i+1].(json.Number); ok {
						v, _ := n.Float64()
						sums[class][c] = append(sums[class][c], v)
					}
				}
			}
			for class, byKPI := range sums {
				if byClass[class] == nil {
					byClass[class] = map[string][]float64{}
				}
				for k, vs := range byKPI {
					var sum float64
					for _, v := range vs {
						sum += v
					}
					byClass[class][k] = append(byClass[class][k], roundKPI(k, sum/float64(len(vs))))
				}
			}
		}
		return byClass, nil
	}
	var published int
	collectortest.Eventually(t, 60*time.Second, func() error {
		want, err := expected()
		if err != nil {
			return err
		}
		series, err := collectortest.QueryErr(influx.URL(), "cluster",
			`SELECT p25, p50, p75, firms FROM benchmark GROUP BY machine_class, kpi, period`)
		if err != nil {
			return err
		}
		got := map[string][]float64{}
		for _, s := range series {
			if s.Tags["period"] != "1h" || len(s.Values) != 1 {
				return fmt.Errorf("series %v", s)
			}
			if ts, _ := s.Values[0][0].(json.Number).Int64(); ts != start.UnixNano() {
				return fmt.Errorf("benchmark at %v, want %v", time.Unix(0, ts).UTC(), start)
			}
			var row []float64
			for _, v := range s.Values[0][1:] {
				f, _ := v.(json.Number).Float64()
				row = append(row, f)
			}
			got[s.Tags["machine_class"]+"/"+s.Tags["kpi"]] = row
		}
		published = 0
		for class, byKPI := range want {
			for kpi, vs := range byKPI {
				key := class + "/" + kpi
				row, ok := got[key]
				if len(vs) < 5 {
					if ok {
						t.Fatalf("%s published with %d firms: %v", key, len(vs), row)
					}
					continue
				}
				if !ok {
					return fmt.Errorf("%s not published yet (%d firms)", key, len(vs))
				}
				if int(row[3]) != len(vs) {
					return fmt.Errorf("%s: firms %v, want %d", key, row[3], len(vs))
				}
				for i, p := range []float64{0.25, 0.5, 0.75} {
					w := hdQuartile(vs, p)
					if math.Abs(row[i]-w) > 1e-5*math.Max(1, math.Abs(w)) {
						return fmt.Errorf("%s p%v = %v, want %v from %v", key, p*100, row[i], w, vs)
					}
				}
				published++
			}
		}
		if len(got) != published {
			return fmt.Errorf("benchmark has %d series, expected %d", len(got), published)
		}
		return nil
	})
	want, _ := expected()
	if len(want["robot-welding"]["oee"]) != 4 || len(want["cnc-lathe"]["oee"]) != 5 || len(want["cnc-5axis"]["oee"]) != 8 {
		t.Fatalf("the test's own set-up is off: %v", want)
	}
	t.Logf("%d benchmark series match; robot-welding (4 firms) withheld, cnc-lathe (5 firms) published", published)

	// The Cluster benchmark dashboard, as the first firm (all three
	// classes) sees it; its values come first in want.
	ownOEE := map[string]float64{}
	for class, byKPI := range want {
		ownOEE[class] = byKPI["oee"][0]
	}
	checkClusterDashboard(t, influx.URL(), firms[0].slug, start,
		map[string]bool{"cnc-5axis": true, "cnc-lathe": true}, ownOEE)
	// Its /metrics: three contributions acknowledged, none waiting.
	if sent, queued := firms[0].agent.metric("shopfloor_share_sent_contributions_total"),
		firms[0].agent.metric("shopfloor_share_queued_contributions"); sent != 3 || queued != 0 {
		t.Errorf("share metrics: sent %v, queued %v; want 3 and 0", sent, queued)
	}

	// Privacy: everything the agents sent to the cluster broker.
	sent := rec.bytes()
	if !bytes.Contains(sent, []byte(firms[0].pseudonym)) {
		t.Fatalf("the recording holds no contribution (%d bytes)", len(sent))
	}
	for _, f := range firms {
		forbidden := []string{f.name, f.slug, f.site}
		for _, m := range f.machines {
			forbidden = append(forbidden, m.line, m.name)
		}
		for _, w := range forbidden {
			if bytes.Contains(bytes.ToLower(sent), []byte(strings.ToLower(w))) {
				t.Errorf("%q was sent to the cluster broker", w)
			}
		}
		// The firm's own log holds exactly what it sent.
		logged, err := os.ReadFile(filepath.Join(share.Dir(f.data), share.LogFile))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(logged)), "\n") {
			var e struct {
				Topic   string          `json:"topic"`
				Payload json.RawMessage `json:"payload"`
			}
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatal(err)
			}
			// In a PUBLISH the packet id sits between topic and payload.
			if !bytes.Contains(sent, []byte(e.Topic)) || !bytes.Contains(sent, e.Payload) {
				t.Errorf("%s logged %s %s, which is not what it sent", f.slug, e.Topic, e.Payload)
			}
		}
	}
	for _, ts := range regexp.MustCompile(`\d{4}-\d\d-\d\dT[0-9:.]+`).FindAll(sent, -1) {
		if !strings.HasSuffix(string(ts), ":00:00") {
			t.Errorf("time %s is finer than the hour", ts)
		}
	}
	// No Unix timestamp in seconds, milliseconds or nanoseconds around the
	// hour either.
	for _, n := range regexp.MustCompile(`\d{10,19}`).FindAll(sent, -1) {
		v, _ := strconv.ParseInt(string(n), 10, 64)
		for _, unit := range []int64{1, 1e3, 1e9} {
			if s := v / unit; s > start.Add(-48*time.Hour).Unix() && s < time.Now().Add(time.Hour).Unix() {
				t.Errorf("%s looks like a timestamp", n)
			}
		}
	}

	for _, f := range firms {
		f.agent.stop()
	}
	hub.stop()
}

type hubProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	done chan error
	logs string
}

// startHubProc runs `shopfloor hub` on config and waits until it has
// subscribed.
func startHubProc(t *testing.T, dir, config string) *hubProc {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "hub.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	h := &hubProc{t: t, logs: filepath.Join(dir, "hub.log"), done: make(chan error, 1)}
	f, err := os.Create(h.logs)
	if err != nil {
		t.Fatal(err)
	}
	h.cmd = exec.Command(agentBin, "hub", "--config", path)
	h.cmd.Stdout, h.cmd.Stderr = f, f
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { h.done <- h.cmd.Wait(); f.Close() }()
	t.Cleanup(func() {
		if h.cmd != nil {
			_ = h.cmd.Process.Kill()
			<-h.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(h.logs)
			t.Logf("hub log:\n%s", b)
		}
	})
	collectortest.Eventually(t, 20*time.Second, func() error {
		b, _ := os.ReadFile(h.logs)
		if !bytes.Contains(b, []byte("hub: subscribed")) {
			return fmt.Errorf("hub not subscribed yet:\n%s", b)
		}
		return nil
	})
	return h
}

func (h *hubProc) stop() {
	h.t.Helper()
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-h.done:
		h.cmd = nil
		if err != nil {
			h.t.Fatalf("hub exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(30 * time.Second):
		h.t.Fatal("hub did not exit within 30 s of SIGTERM")
	}
}

// startFirmAgent runs an agent on config with the given data directory,
// which already holds the firm secret.
func startFirmAgent(t *testing.T, config, data string, plant, influx *collectortest.Service, db string) *agentProc {
	t.Helper()
	return launchAgent(t, config, data, filepath.Join(filepath.Dir(data), "agent.log"),
		"MQTT_URL="+plant.URL(), "INFLUX_URL="+influx.URL(), "INFLUX_BUCKET="+db)
}
