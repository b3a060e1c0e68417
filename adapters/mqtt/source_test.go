package mqtt

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// fakeBroker accepts one connection, grants CONNECT, and answers the
// SUBSCRIBE with the given return codes, one per filter in the order
// paho sent them. It stands in for a broker whose ACL refuses a topic,
// which Mosquitto 2.0 does not do (it grants and filters on delivery).
func fakeBroker(t *testing.T, codes map[string]byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			p, err := packets.ReadPacket(conn)
			if err != nil {
				return
			}
			switch p := p.(type) {
			case *packets.ConnectPacket:
				ack := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
				if err := ack.Write(conn); err != nil {
					return
				}
			case *packets.SubscribePacket:
				ack := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
				ack.MessageID = p.MessageID
				for _, topic := range p.Topics {
					ack.ReturnCodes = append(ack.ReturnCodes, codes[topic])
				}
				if err := ack.Write(conn); err != nil {
					return
				}
			case *packets.DisconnectPacket:
				return
			}
		}
	}()
	return "tcp://" + l.Addr().String()
}

func TestRunRefusedSubscription(t *testing.T) {
	url := fakeBroker(t, map[string]byte{"factory/#": 1, "secret/#": subackFailure})
	cfg := Config{URL: url, ClientID: "agent", ConnectTimeout: 5 * time.Second, Subscriptions: []Subscription{
		{Topic: "factory/#"}, {Topic: "secret/#"},
	}}
	src, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := &collectortest.Output{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = src.Run(ctx, out)
	if err == nil || !strings.Contains(err.Error(), "refused topic secret/#") || strings.Contains(err.Error(), "factory/#") {
		t.Fatalf("Run = %v, want an error naming secret/# and only it", err)
	}
	if !strings.Contains(err.Error(), "mqtt broker "+url) {
		t.Errorf("error %q does not name the broker", err)
	}
	for _, up := range out.ConnectedStates() {
		if up {
			t.Error("reported connected although a subscription was refused")
		}
	}
}

func TestNewChecksConfigAndTLSFiles(t *testing.T) {
	if _, err := New(Config{}, nil); err == nil || !strings.Contains(err.Error(), "url") {
		t.Errorf("New(empty) = %v, want the validation errors", err)
	}
	cfg := Config{URL: "ssl://broker:8883", ClientID: "a", TLS: TLSConfig{CAFile: "testdata/no-such-ca.pem"},
		Subscriptions: []Subscription{{Topic: "a"}}}
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "tls.ca_file") {
		t.Errorf("New with a missing CA file = %v, want a tls.ca_file error", err)
	}
	cfg.TLS.CAFile = "testdata/flat.json"
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("New with a non-PEM CA file = %v, want a PEM error", err)
	}
}
