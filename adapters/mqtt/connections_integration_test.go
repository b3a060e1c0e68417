//go:build integration

package mqtt

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// messagesOn publishes n messages on each of topics and returns them.
func messagesOn(topics []string, from, n int) []collectortest.Message {
	var msgs []collectortest.Message
	for _, tp := range topics {
		msgs = append(msgs, seqMsgs(tp, from, n)...)
	}
	return msgs
}

// exactly checks that every topic received exactly from..from+n-1, in any
// order (several connections do not keep a topic's order).
func exactly(t *testing.T, out *collectortest.Output, topics []string, from, n int) {
	t.Helper()
	got := seqs(out)
	for _, tp := range topics {
		vs := append([]int(nil), got[tp]...)
		sort.Ints(vs)
		if len(vs) != n {
			t.Fatalf("%s: %d messages, want %d", tp, len(vs), n)
		}
		for i, v := range vs {
			if v != from+i {
				t.Fatalf("%s: seq %d missing or duplicated (got %d at %d)", tp, from+i, v, i)
			}
		}
	}
}

// sessionPresent connects as id with a persistent session and reports
// whether the broker had one, then deletes what it may have created.
func sessionPresent(t *testing.T, url, id string) bool {
	t.Helper()
	connect := func(clean bool) (paho.Client, bool) {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(clean).SetAutoReconnect(false))
		tok := c.Connect()
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect as %s: %v", id, tok.Error())
		}
		return c, tok.(*paho.ConnectToken).SessionPresent()
	}
	c, present := connect(false)
	c.Disconnect(50)
	c, _ = connect(true)
	c.Disconnect(50)
	return present
}

// TestSourceSeveralConnections: with connections: 3 the messages of a
// shared subscription arrive exactly once over three sessions; going back
// to one connection takes over what the three sessions queued while the
// agent was away and deletes them.
func TestSourceSeveralConnections(t *testing.T) {
	svc := collectortest.Mosquitto(t)
	state := t.TempDir()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := testConfig(svc.URL(), "agent-multi")
	cfg.Connections = 3
	src, err := New(cfg, logger, WithStateDir(state))
	if err != nil {
		t.Fatal(err)
	}
	var topics []string
	for i := range 12 {
		topics = append(topics, fmt.Sprintf("factory/l1/m%d/telemetry", i))
	}
	pub := collectortest.Publisher(t, svc.URL())

	first := &collectortest.Output{}
	r := collectortest.Start(t, src, first)
	collectortest.WaitConnected(t, first, 1)
	collectortest.Publish(t, pub, messagesOn(topics, 0, 100)...)
	waitSeqs(t, first, 1200)
	r.Stop(t)
	exactly(t, first, topics, 0, 100)
	if b, err := os.ReadFile(filepath.Join(state, sessionsFile)); err != nil || string(b) != `{"client_ids":["agent-multi-1","agent-multi-2","agent-multi-3"]}` {
		t.Fatalf("sessions record %s (%v)", b, err)
	}

	// Away: the three sessions queue these.
	collectortest.Publish(t, pub, messagesOn(topics, 100, 50)...)

	cfg.Connections = 1
	single, err := New(cfg, logger, WithStateDir(state))
	if err != nil {
		t.Fatal(err)
	}
	second := &collectortest.Output{}
	r = collectortest.Start(t, single, second)
	waitSeqs(t, second, 600)
	// New messages now come over the one connection.
	collectortest.Publish(t, pub, messagesOn(topics, 150, 20)...)
	waitSeqs(t, second, 840)
	// The record lists only the session in use once the others are gone.
	collectortest.Eventually(t, 30*time.Second, func() error {
		b, err := os.ReadFile(filepath.Join(state, sessionsFile))
		if err != nil || string(b) != `{"client_ids":["agent-multi"]}` {
			return fmt.Errorf("sessions record %s (%v)", b, err)
		}
		return nil
	})
	r.Stop(t)
	got := seqs(second)
	for _, tp := range topics {
		vs := append([]int(nil), got[tp]...)
		sort.Ints(vs)
		if len(vs) != 70 || vs[0] != 100 || vs[69] != 169 {
			t.Fatalf("%s: got %d messages %v, want 100..169 once each", tp, len(vs), vs)
		}
	}
	for i := 1; i <= 3; i++ {
		if id := fmt.Sprintf("agent-multi-%d", i); sessionPresent(t, svc.URL(), id) {
			t.Errorf("session %s still on the broker after it was retired", id)
		}
	}
}
