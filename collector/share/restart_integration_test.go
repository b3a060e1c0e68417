//go:build integration

package share

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// TestShareQueueSurvivesRestart: a contribution queued while the cluster
// broker cannot be reached is still queued after the agent restarts, is
// not queued a second time, and the restarted agent delivers it once the
// broker can be reached. (TLS and the firm's user are
// TestShareStoreAndForwardTLS's subject; this broker is plain.)
func TestShareQueueSurvivesRestart(t *testing.T) {
	mq := collectortest.Mosquitto(t)
	o := paho.NewClientOptions().AddBroker(mq.URL()).SetClientID("test-hub").SetAutoReconnect(false)
	got := subscribeContributions(t, o)

	dataDir := t.TempDir()
	gate := collectortest.FreePort(t) // nothing listens here until forwardOn
	cfg := Config{Enabled: true, Settle: time.Second, Classes: map[string]string{"cnc-1": "cnc-lathe"},
		Broker: BrokerConfig{URL: fmt.Sprintf("tcp://127.0.0.1:%d", gate), ConnectTimeout: 2 * time.Second}}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// The first run: the contribution is queued and cannot be sent.
	s1, err := New(cfg, dataDir, logger)
	if err != nil {
		t.Fatal(err)
	}
	start := observeLastHour(s1, "cnc-1", map[string]float64{"oee": 0.5731, "mttr_s": 421.5})
	collectortest.Eventually(t, 10*time.Second, func() error {
		if err := s1.check(); err != nil {
			return err
		}
		if n := s1.Stats().Queued; n != 1 {
			return fmt.Errorf("%d queued", n)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s1.Run(ctx) }()
	collectortest.Eventually(t, 20*time.Second, func() error {
		if st := s1.Stats(); st.SendFailures < 1 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	stopSharer(t, s1, cancel, done)
	select {
	case m := <-got:
		t.Fatalf("delivered %s before the broker was reachable", m.Topic())
	default:
	}

	// The restart: the queue on disk still holds it, and the restored
	// state keeps it from being queued again.
	s2, err := New(cfg, dataDir, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.check(); err != nil {
		t.Fatal(err)
	}
	if st := s2.Stats(); st.Queued != 1 {
		t.Fatalf("after the restart %d contributions queued, want the 1 from before", st.Queued)
	}
	forwardOn(t, gate, fmt.Sprintf("127.0.0.1:%d", mq.Port))
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	done = make(chan error, 1)
	go func() { done <- s2.Run(ctx) }()
	c := awaitContribution(t, got, Topic(DefaultTopicPrefix, s2.Pseudonym(), "cnc-lathe"), "after the restart")
	if c.KPIs[KPIOEE] != 0.5731 || c.KPIs[KPIMTTR] != 421.5 || c.Machines != 1 || !c.Start.Equal(start) || c.Contributor != s2.Pseudonym() {
		t.Errorf("contribution %+v", c)
	}
	stopAfterDelivery(t, s2, cancel, done)
	// Sent once, so logged once: the restart did not queue it again.
	logged, err := os.ReadFile(filepath.Join(Dir(dataDir), LogFile))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(logged, []byte("\n")); n != 1 {
		t.Errorf("the local log holds %d contributions, want 1:\n%s", n, logged)
	}
}
