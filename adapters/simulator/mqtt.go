package simulator

import (
	"context"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// MQTTPublisher publishes each machine's values as the flat JSON of
// deploy/examples/mqtt-json.yaml on factory/<line>/<machine>/telemetry.
type MQTTPublisher struct {
	client paho.Client
	qos    byte
}

// NewMQTTPublisher connects to the broker at url. The connection comes
// back by itself after a broker restart.
func NewMQTTPublisher(url, clientID string, qos byte) (*MQTTPublisher, error) {
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(clientID).
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).SetMaxReconnectInterval(5 * time.Second).
		SetOrderMatters(false)
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("simulator: connect to MQTT broker %s: %v", url, tok.Error())
	}
	return &MQTTPublisher{client: c, qos: qos}, nil
}

// Publish sends one message and waits for the broker's acknowledgement.
func (p *MQTTPublisher) Publish(ctx context.Context, m Placed, v Values) error {
	topic := fmt.Sprintf("factory/%s/%s/telemetry", m.Line, m.Name)
	tok := p.client.Publish(topic, p.qos, false, v.JSON(m.Kind))
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(5 * time.Second):
		return fmt.Errorf("publish to %s: no acknowledgement within 5s", topic)
	}
}

// Close disconnects.
func (p *MQTTPublisher) Close() { p.client.Disconnect(250) }
