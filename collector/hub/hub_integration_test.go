//go:build integration

package hub

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
	"github.com/noordoostpolder/shopfloor/collector/config"
	"github.com/noordoostpolder/shopfloor/collector/share"
)

func newPseudonym(t *testing.T) string {
	t.Helper()
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	return share.Pseudonym(secret)
}

// clusterBroker starts Mosquitto with the shipped deploy/cluster/mosquitto.conf
// and deploy/cluster/acl, only the file locations and the port replaced by
// the test's, and users (name -> password). It returns the service and
// the ssl:// URL of its TLS listener.
func clusterBroker(t *testing.T, p *collectortest.PKI, users map[string]string) (*collectortest.Service, string) {
	t.Helper()
	shipped, err := os.ReadFile("../../deploy/cluster/mosquitto.conf")
	if err != nil {
		t.Fatal(err)
	}
	acl, err := filepath.Abs("../../deploy/cluster/acl")
	if err != nil {
		t.Fatal(err)
	}
	var pw strings.Builder
	for u, p := range users {
		pw.WriteString(collectortest.MosquittoPassword(t, u, p))
	}
	pwFile := filepath.Join(p.Dir, "passwd")
	if err := os.WriteFile(pwFile, []byte(pw.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, key := p.Issue(t, "broker", x509.ExtKeyUsageServerAuth)
	port := collectortest.FreePort(t)
	var lines []string
	for _, l := range strings.Split(string(shipped), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, _, _ := strings.Cut(l, " ")
		switch k {
		case "listener":
			l = fmt.Sprintf("listener %d 127.0.0.1", port)
		case "password_file":
			l = k + " " + pwFile
		case "acl_file":
			l = k + " " + acl
		case "cafile":
			l = k + " " + p.CA
		case "certfile":
			l = k + " " + cert
		case "keyfile":
			l = k + " " + key
		case "persistence_location":
			continue // the test's own, from collectortest
		}
		lines = append(lines, l)
	}
	return collectortest.Mosquitto(t, lines...), "ssl://127.0.0.1:" + strconv.Itoa(port)
}

func brokerConfig(url, user, password string, p *collectortest.PKI) share.BrokerConfig {
	b := share.BrokerConfig{URL: url, Username: user, Password: config.Secret(password)}
	if p != nil {
		b.TLS.CAFile = p.CA
	}
	b.SetDefaults()
	return b
}

// client connects as a firm would.
func client(t *testing.T, b share.BrokerConfig, id string) (paho.Client, error) {
	t.Helper()
	o, err := b.ClientOptions(id)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(o)
	if err := share.Wait(context.Background(), c.Connect(), 10*time.Second); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

func contribution(id, class string, start time.Time, oee float64) share.Contribution {
	return share.Contribution{Version: 1, Contributor: id, Class: class, Period: "1h", Start: start, Machines: 2,
		KPIs: map[string]float64{"oee": oee, "availability": math.Min(1, oee+0.2)}}
}

func publish(t *testing.T, c paho.Client, topic string, v share.Contribution) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := share.Wait(context.Background(), c.Publish(topic, 1, false, b), 10*time.Second); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

func startHub(t *testing.T, cfg Config, opts ...Option) (*Hub, func()) {
	t.Helper()
	h, err := New(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("hub Run: %v", err)
		}
	}
	t.Cleanup(func() {
		select {
		case <-ctx.Done():
		default:
			stop()
		}
	})
	collectortest.Eventually(t, 20*time.Second, func() error {
		if !h.Ready() {
			return fmt.Errorf("hub not subscribed yet")
		}
		return nil
	})
	return h, stop
}

// TestClusterBrokerACLPseudonym: with the shipped broker config a firm
// can publish under its own pseudonym only, cannot read contributions,
// can neither publish nor read the hubs' mirrors, and nobody gets in
// without a password.
func TestClusterBrokerACLPseudonym(t *testing.T) {
	p := collectortest.NewPKI(t, "cluster-ca")
	a, b := newPseudonym(t), newPseudonym(t)
	_, url := clusterBroker(t, p, map[string]string{a: "pw-a", b: "pw-b", "shopfloor-hub": "pw-hub"})
	start := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	h, _ := startHub(t, Config{DataDir: t.TempDir(), Broker: brokerConfig(url, "shopfloor-hub", "pw-hub", p),
		InfluxDB: InfluxConfig{URL: "http://127.0.0.1:1", Bucket: "x"}, Quiet: time.Hour}, WithWriter(&memWriter{}))

	firmA, err := client(t, brokerConfig(url, a, "pw-a", p), "sf-"+a)
	if err != nil {
		t.Fatalf("firm A cannot connect: %v", err)
	}
	// Its own pseudonym: accepted.
	publish(t, firmA, share.Topic("shopfloor/v1", a, "cnc-lathe"), contribution(a, "cnc-lathe", start, 0.6))
	collectortest.Eventually(t, 10*time.Second, func() error {
		if got := h.Contributors("cnc-lathe", start); !slices.Equal(got, []string{a}) {
			return fmt.Errorf("cnc-lathe contributors %v", got)
		}
		return nil
	})
	// Under B's pseudonym, as B in every respect: the broker drops it.
	publish(t, firmA, share.Topic("shopfloor/v1", b, "cnc-5axis"), contribution(b, "cnc-5axis", start, 0.9))
	// A marker on the same connection after it: once it is in, the forged
	// one, sent before it, would be too.
	publish(t, firmA, share.Topic("shopfloor/v1", a, "robot-welding"), contribution(a, "robot-welding", start, 0.5))
	collectortest.Eventually(t, 10*time.Second, func() error {
		if got := h.Contributors("robot-welding", start); !slices.Equal(got, []string{a}) {
			return fmt.Errorf("robot-welding contributors %v", got)
		}
		return nil
	})
	if got := h.Contributors("cnc-5axis", start); len(got) != 0 {
		t.Fatalf("firm A published under firm B's pseudonym: hub has %v", got)
	}

	// A firm cannot read the others' contributions.
	got := make(chan string, 10)
	tok := firmA.Subscribe("shopfloor/v1/contrib/#", 1, func(_ paho.Client, m paho.Message) { got <- m.Topic() })
	if err := share.Wait(context.Background(), tok, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("SUBACK for firm A reading all contributions: %v", tok.(*paho.SubscribeToken).Result())
	firmB, err := client(t, brokerConfig(url, b, "pw-b", p), "sf-"+b)
	if err != nil {
		t.Fatalf("firm B cannot connect: %v", err)
	}
	publish(t, firmB, share.Topic("shopfloor/v1", b, "cnc-5axis"), contribution(b, "cnc-5axis", start, 0.7))
	collectortest.Eventually(t, 10*time.Second, func() error {
		if got := h.Contributors("cnc-5axis", start); !slices.Equal(got, []string{b}) {
			return fmt.Errorf("cnc-5axis contributors %v", got)
		}
		return nil
	})
	// A marker A may receive if it could read anything: its own write
	// topic is write-only too, so nothing at all may arrive.
	publish(t, firmA, share.Topic("shopfloor/v1", a, "cnc-5axis"), contribution(a, "cnc-5axis", start, 0.4))
	collectortest.Eventually(t, 10*time.Second, func() error {
		if got := h.Contributors("cnc-5axis", start); len(got) != 2 {
			return fmt.Errorf("cnc-5axis contributors %v", got)
		}
		return nil
	})
	select {
	case topic := <-got:
		t.Fatalf("firm A read %s", topic)
	default:
	}

	// The hubs' topics are closed to firms. A forged mirror of firm B's
	// contribution for a class B never sent, stamped far ahead so it
	// would win: the broker drops it, so once A's marker after it is in,
	// the hub has only A.
	forged, _ := json.Marshal(Mirror{Received: time.Now().Add(time.Hour).UnixMilli(),
		Payload: payload(t, contribution(b, "press-brake", start, 0.99))})
	if err := share.Wait(context.Background(), firmA.Publish(MirrorTopic("shopfloor/v1", DefaultGroup, b, "press-brake"), 1, false, forged), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	publish(t, firmA, share.Topic("shopfloor/v1", a, "press-brake"), contribution(a, "press-brake", start, 0.5))
	collectortest.Eventually(t, 10*time.Second, func() error {
		if got := h.Contributors("press-brake", start); !slices.Equal(got, []string{a}) {
			return fmt.Errorf("press-brake contributors %v", got)
		}
		return nil
	})
	if n := h.Accepted()[SourceMirror]; n != 0 {
		t.Fatalf("the hub took %d mirrors a firm published", n)
	}
	// Nor can a firm read the mirrors: the hub mirrors B's next
	// contribution, which a hub-user observer sees and A must not.
	tok = firmA.Subscribe("shopfloor/v1/hub/#", 1, func(_ paho.Client, m paho.Message) { got <- m.Topic() })
	if err := share.Wait(context.Background(), tok, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("SUBACK for firm A reading the mirrors: %v", tok.(*paho.SubscribeToken).Result())
	obs, err := client(t, brokerConfig(url, "shopfloor-hub", "pw-hub", p), "observer")
	if err != nil {
		t.Fatal(err)
	}
	mirrored := make(chan string, 10)
	if err := share.Wait(context.Background(), obs.Subscribe("shopfloor/v1/hub/#", 1, func(_ paho.Client, m paho.Message) { mirrored <- m.Topic() }), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	publish(t, firmB, share.Topic("shopfloor/v1", b, "press-brake"), contribution(b, "press-brake", start, 0.6))
	select {
	case topic := <-mirrored:
		if want := MirrorTopic("shopfloor/v1", DefaultGroup, b, "press-brake"); topic != want {
			t.Fatalf("observer got %s, want %s", topic, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hub's mirror of B's contribution did not reach a hub-user subscriber")
	}
	// A round trip on A's connection after the mirror was routed: a
	// message for A would be read before this PUBACK.
	publish(t, firmA, share.Topic("shopfloor/v1", a, "press-brake"), contribution(a, "press-brake", start, 0.55))
	select {
	case topic := <-got:
		t.Fatalf("firm A read %s", topic)
	default:
	}

	// No way in without the right password, nor anonymously.
	if _, err := client(t, brokerConfig(url, a, "pw-b", p), "guess"); err == nil {
		t.Error("connected with firm B's password as firm A")
	}
	if _, err := client(t, brokerConfig(url, "", "", p), "anon"); err == nil {
		t.Error("connected anonymously")
	}
}

// TestHubRestartMidPeriodLosesNothing: contributions taken in before a
// restart come back from the state file, those sent while the hub is
// down come from the broker's persistent session, and a replacement sent
// while it is down wins.
func TestHubRestartMidPeriodLosesNothing(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "cluster")
	start := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	cfg := Config{DataDir: t.TempDir(), Broker: brokerConfig(broker.URL(), "", "", nil),
		InfluxDB: InfluxConfig{URL: influx.URL(), Bucket: "cluster"}, Quiet: time.Hour}
	pub := collectortest.Publisher(t, broker.URL())

	oee := []float64{0.52, 0.61, 0.44, 0.7, 0.58, 0.66}
	ids := make([]string, len(oee))
	for i := range ids {
		ids[i] = newPseudonym(t)
	}
	h1, stop1 := startHub(t, cfg)
	for i := 0; i < 3; i++ {
		publish(t, pub, share.Topic("shopfloor/v1", ids[i], "cnc-lathe"), contribution(ids[i], "cnc-lathe", start, 0.1))
	}
	collectortest.Eventually(t, 10*time.Second, func() error {
		if n := h1.Pending(); n != 3 {
			return fmt.Errorf("pending %d", n)
		}
		return nil
	})
	stop1() // mid-period: nothing is published yet (quiet is an hour)

	// While the hub is away: three new firms, and the first three send
	// their corrected contributions.
	for i := range ids {
		publish(t, pub, share.Topic("shopfloor/v1", ids[i], "cnc-lathe"), contribution(ids[i], "cnc-lathe", start, oee[i]))
	}
	cfg.Quiet = time.Second
	startHub(t, cfg)

	want := [3]float64{Quantile(oee, 0.25), Quantile(oee, 0.5), Quantile(oee, 0.75)}
	collectortest.Eventually(t, 30*time.Second, func() error {
		series, err := collectortest.QueryErr(influx.URL(), "cluster", fmt.Sprintf(
			`SELECT p25, p50, p75, firms FROM benchmark WHERE machine_class = 'cnc-lathe' AND kpi = 'oee' AND period = '1h' AND time = '%s'`,
			start.Format(time.RFC3339)))
		if err != nil || len(series) == 0 {
			return fmt.Errorf("no benchmark row yet (%v)", err)
		}
		row := series[0].Values[0]
		firms, _ := row[4].(json.Number).Int64()
		if firms != 6 {
			return fmt.Errorf("firms %d, want 6", firms)
		}
		for i, w := range want {
			if got, _ := row[i+1].(json.Number).Float64(); math.Abs(got-w) > 1e-9 {
				t.Fatalf("quartile %d = %v, want %v", i, got, w)
			}
		}
		return nil
	})
}
