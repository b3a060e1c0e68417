//go:build integration

package share

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

// forwardOn starts, on port, a TCP forwarder to target: the cluster
// broker becoming reachable.
func forwardOn(t *testing.T, port int, target string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
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
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
}

// TestShareStoreAndForwardTLS: while the cluster broker cannot be
// reached the contribution waits in the queue on disk; once it can, the
// agent delivers it over TLS with its own user, and it arrives unchanged.
func TestShareStoreAndForwardTLS(t *testing.T) {
	p := collectortest.NewPKI(t, "cluster-ca")
	dataDir := t.TempDir()
	pseudonym, err := PseudonymOf(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := p.Issue(t, "broker", x509.ExtKeyUsageServerAuth)
	pw := filepath.Join(p.Dir, "passwd")
	if err := os.WriteFile(pw, []byte(collectortest.MosquittoPassword(t, pseudonym, "firm-pw")+collectortest.MosquittoPassword(t, "shopfloor-hub", "hub-pw")), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsPort := collectortest.FreePort(t)
	collectortest.Mosquitto(t, fmt.Sprintf("listener %d 127.0.0.1", tlsPort), "cafile "+p.CA, "certfile "+cert, "keyfile "+key,
		"allow_anonymous false", "password_file "+pw)

	// The hub's side: a subscriber on the broker itself.
	hubCfg := BrokerConfig{URL: fmt.Sprintf("ssl://127.0.0.1:%d", tlsPort), Username: "shopfloor-hub", Password: "hub-pw", TLS: TLSConfig{CAFile: p.CA}}
	hubCfg.SetDefaults()
	o, err := hubCfg.ClientOptions("test-hub")
	if err != nil {
		t.Fatal(err)
	}
	got := subscribeContributions(t, o)

	// The agent reaches the broker through a port nothing listens on yet.
	gate := collectortest.FreePort(t)
	cfg := Config{Enabled: true, Settle: time.Second, Classes: map[string]string{"cnc-1": "cnc-5axis"},
		Broker: BrokerConfig{URL: fmt.Sprintf("ssl://127.0.0.1:%d", gate), Username: pseudonym,
			Password: config.Secret("firm-pw"), TLS: TLSConfig{CAFile: p.CA}, ConnectTimeout: 2 * time.Second}}
	s, err := New(cfg, dataDir, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	start := observeLastHour(s, "cnc-1", map[string]float64{"oee": 0.61, "availability": 0.8})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	collectortest.Eventually(t, 10*time.Second, func() error {
		if n := s.q.Stats().Records; n != 1 {
			return fmt.Errorf("%d queued", n)
		}
		return nil
	})
	collectortest.Eventually(t, 10*time.Second, func() error {
		if st := s.Stats(); st.SendFailures < 2 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	select {
	case m := <-got:
		t.Fatalf("delivered %s before the broker was reachable", m.Topic())
	default:
	}
	if n := s.q.Stats().Records; n != 1 {
		t.Fatalf("%d contributions queued while the broker is unreachable, want 1", n)
	}

	forwardOn(t, gate, fmt.Sprintf("127.0.0.1:%d", tlsPort))
	c := awaitContribution(t, got, Topic(DefaultTopicPrefix, pseudonym, "cnc-5axis"), "after the broker became reachable")
	if c.KPIs[KPIOEE] != 0.61 || c.Machines != 1 || !c.Start.Equal(start) {
		t.Errorf("contribution %+v", c)
	}
	stopAfterDelivery(t, s, cancel, done)
}

// observeLastHour gives s the KPI engine's rows of the last whole hour
// of machine (planned all of it, with kpis) and its last minute, so the
// hour is closed and due to be shared; it returns the hour's start.
func observeLastHour(s *Sharer, machine string, kpis map[string]float64) time.Time {
	start := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
	a := collector.Asset{Site: "plant", Machine: machine}
	row := func(window string, at time.Time, signal string, v float64) collector.Sample {
		return collector.Sample{Asset: a, Signal: signal, Value: collector.Float(v), SourceTime: at, Window: window}
	}
	rows := []collector.Sample{row("1h", start, "planned_s", 3600), row("1m", start.Add(59*time.Minute), "run_s", 60)}
	for k, v := range kpis {
		rows = append(rows, row("1h", start, k, v))
	}
	s.Observe(rows)
	return start
}

// awaitContribution waits for the queued contribution to arrive at the
// broker on topic, and decodes it.
func awaitContribution(t *testing.T, got <-chan paho.Message, topic, when string) Contribution {
	t.Helper()
	var m paho.Message
	select {
	case m = <-got:
	case <-time.After(30 * time.Second):
		t.Fatalf("the queued contribution was not delivered %s", when)
	}
	if m.Topic() != topic {
		t.Errorf("topic %s, want %s", m.Topic(), topic)
	}
	var c Contribution
	if err := json.Unmarshal(m.Payload(), &c); err != nil {
		t.Fatalf("payload %s: %v", m.Payload(), err)
	}
	return c
}

// stopAfterDelivery waits until s has sent its one contribution and holds
// none, then stops and closes it.
func stopAfterDelivery(t *testing.T, s *Sharer, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	collectortest.Eventually(t, 10*time.Second, func() error {
		if st := s.Stats(); st.Queued != 0 || st.Sent != 1 {
			return fmt.Errorf("stats %+v after delivery", st)
		}
		return nil
	})
	stopSharer(t, s, cancel, done)
}

// subscribeContributions connects as the hub would and delivers every
// contribution the broker gets.
func subscribeContributions(t *testing.T, o *paho.ClientOptions) <-chan paho.Message {
	t.Helper()
	got := make(chan paho.Message, 4)
	sub := paho.NewClient(o)
	if err := Wait(context.Background(), sub.Connect(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Disconnect(100) })
	if err := Wait(context.Background(), sub.Subscribe("shopfloor/v1/contrib/#", 1, func(_ paho.Client, m paho.Message) { got <- m }), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return got
}

// stopSharer ends the Run that reports to done and closes s.
func stopSharer(t *testing.T, s *Sharer, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
