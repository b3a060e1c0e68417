package collectortest

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

var publisherSeq atomic.Int64

// Publisher connects a plain MQTT 3.1.1 client to the broker at url, with
// a clean session and no automatic reconnect, so a test sees every
// failure. It disconnects when the test ends.
func Publisher(t testing.TB, url string) paho.Client {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker(url).
		SetClientID(fmt.Sprintf("test-pub-%d-%d", time.Now().UnixNano(), publisherSeq.Add(1))).
		SetCleanSession(true).SetAutoReconnect(false).SetProtocolVersion(4)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect to %s: %v", url, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// Message is one MQTT publish: a topic and a payload.
type Message struct {
	Topic   string
	Payload string
}

// Publish sends messages at QoS 1, in order, and waits for every PUBACK,
// so that when it returns the broker holds them all.
func Publish(t testing.TB, c paho.Client, msgs ...Message) {
	t.Helper()
	toks := make([]paho.Token, len(msgs))
	for i, m := range msgs {
		toks[i] = c.Publish(m.Topic, 1, false, m.Payload)
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d to %s: %v", i, msgs[i].Topic, tok.Error())
		}
	}
}
