package share

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// ClientOptions are the paho options for a connection to the cluster
// broker: TLS, credentials, timeouts and no automatic reconnect, because
// the callers retry with their own backoff.
func (b BrokerConfig) ClientOptions(clientID string) (*paho.ClientOptions, error) {
	tc, err := b.TLSClientConfig()
	if err != nil {
		return nil, err
	}
	o := paho.NewClientOptions().AddBroker(b.URL).SetClientID(clientID).
		SetUsername(b.Username).SetPassword(b.Password.Reveal()).
		SetConnectTimeout(b.ConnectTimeout).SetKeepAlive(b.KeepAlive).
		SetAutoReconnect(false).SetConnectRetry(false).SetWriteTimeout(b.ConnectTimeout)
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	return o, nil
}

// Wait waits for a paho token, ctx or the timeout, whichever comes first.
func Wait(ctx context.Context, tok paho.Token, timeout time.Duration) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		return errors.New("no answer from the broker within the connect timeout")
	}
}

// mqttPublisher publishes at QoS 1 over one connection it opens when
// needed.
type mqttPublisher struct {
	cfg      BrokerConfig
	clientID string
	log      *slog.Logger
	c        paho.Client
}

func newMQTTPublisher(cfg BrokerConfig, clientID string, logger *slog.Logger) (*mqttPublisher, error) {
	if _, err := cfg.ClientOptions(clientID); err != nil {
		return nil, fmt.Errorf("share.broker: %w", err)
	}
	return &mqttPublisher{cfg: cfg, clientID: clientID, log: logger}, nil
}

func (p *mqttPublisher) connect(ctx context.Context) error {
	// Options are built on every connect so renewed certificates are read.
	o, err := p.cfg.ClientOptions(p.clientID)
	if err != nil {
		return err
	}
	// A clean session: the agent only publishes, and its queue, not the
	// broker, keeps what is not delivered.
	o.SetCleanSession(true)
	c := paho.NewClient(o)
	if err := Wait(ctx, c.Connect(), p.cfg.ConnectTimeout); err != nil {
		c.Disconnect(0)
		return fmt.Errorf("connect to %s: %w", p.cfg.URL, err)
	}
	p.c = c
	p.log.Info("share: connected to the cluster broker", "url", p.cfg.URL)
	return nil
}

// Publish sends payload at QoS 1 and waits for the broker's PUBACK.
func (p *mqttPublisher) Publish(ctx context.Context, topic string, payload []byte) error {
	if p.c == nil || !p.c.IsConnectionOpen() {
		p.Close()
		if err := p.connect(ctx); err != nil {
			return err
		}
	}
	if err := Wait(ctx, p.c.Publish(topic, 1, false, payload), p.cfg.ConnectTimeout); err != nil {
		p.Close()
		return fmt.Errorf("publish to %s: %w", p.cfg.URL, err)
	}
	return nil
}

// Close disconnects, giving an in-flight acknowledgement a moment.
func (p *mqttPublisher) Close() {
	if p.c != nil {
		p.c.Disconnect(250)
		p.c = nil
	}
}
