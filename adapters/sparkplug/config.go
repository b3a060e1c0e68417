package sparkplug

import (
	"crypto/tls"
	"errors"
	"time"

	"github.com/noordoostpolder/shopfloor/adapters/mqtt"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

// Defaults applied by SetDefaults.
const (
	// DefaultKeepAlive matches the plain MQTT source: a dead connection
	// (and so every edge node behind it) is noticed within a minute.
	DefaultKeepAlive = 30 * time.Second
	// DefaultConnectTimeout covers a TLS handshake over a slow link.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultMaxPayloadBytes is far above a birth certificate of a few
	// thousand metrics, and low enough that a runaway publisher cannot
	// make the agent hold megabytes per message.
	DefaultMaxPayloadBytes = 1 << 20
	// DefaultWorkers decode in parallel; messages are sharded by edge node,
	// whose sequence numbers must be read in order.
	DefaultWorkers = 2
	// DefaultReorderTimeout is how long a message that arrived ahead of its
	// sequence number waits for the missing ones. A broker delivers one
	// client's messages in order, so a gap that lasts longer than this is a
	// loss, not a reordering; two seconds keeps the data late by at most
	// that much while a bridge or cluster catches up.
	DefaultReorderTimeout = 2 * time.Second
	// DefaultRebirthMinInterval spaces the rebirth requests sent to one edge
	// node. A birth of thousands of metrics is expensive for the node and
	// the broker; one request every few seconds is enough, because every
	// message that arrives meanwhile asks again.
	DefaultRebirthMinInterval = 5 * time.Second
)

// maxPayload is the largest payload the MQTT protocol can carry.
const maxPayload = 268435455

// Config is one Sparkplug B host application. The zero value of a field
// means its default (see SetDefaults).
type Config struct {
	// URL of the broker: tcp://, mqtt://, ssl://, tls://, mqtts://, ws://
	// or wss:// followed by host:port.
	URL string `yaml:"url"`
	// HostID is the Sparkplug host application id: the agent publishes
	// its STATE on spBv1.0/STATE/<host_id>. Edge nodes configured with it
	// as their primary host send their births when it comes online.
	HostID string `yaml:"host_id"`
	// ClientID names the MQTT session; empty means the host id.
	ClientID string        `yaml:"client_id"`
	Username string        `yaml:"username"`
	Password config.Secret `yaml:"password"`
	// PersistentSession asks the broker to keep the subscriptions and
	// queue QoS 1 messages while the agent is away. Sparkplug 3.0 requires
	// a host application to connect with a clean session (births must be
	// seen afresh, and edge nodes keep their own store and forward), so it
	// is off by default.
	PersistentSession bool `yaml:"persistent_session"`
	// Groups limits the host to these Sparkplug group ids; empty means
	// every group (spBv1.0/#).
	Groups []string `yaml:"groups"`
	// ReorderTimeout is how long a message that arrived ahead of its
	// sequence number is held for the missing ones, after which the gap
	// triggers a rebirth request.
	ReorderTimeout time.Duration `yaml:"reorder_timeout"`
	// RebirthMinInterval is the least time between two rebirth requests
	// (NCMD Node Control/Rebirth) to one edge node.
	RebirthMinInterval time.Duration `yaml:"rebirth_min_interval"`
	// KeepAlive is the MQTT keep-alive.
	KeepAlive time.Duration `yaml:"keep_alive"`
	// ConnectTimeout bounds the TCP/TLS connect and the CONNACK, SUBACK
	// and STATE PUBACK waits.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// MaxPayloadBytes is the largest payload decoded; larger ones are
	// counted as bad input "oversized".
	MaxPayloadBytes int `yaml:"max_payload_bytes"`
	// Workers decode and emit messages in parallel, sharded by edge node.
	Workers int `yaml:"workers"`
	// TLS is used for the ssl, tls, mqtts and wss schemes; the same keys as
	// the mqtt source.
	TLS mqtt.TLSConfig `yaml:"tls"`
}

// SetDefaults fills unset values. It is idempotent.
func (c *Config) SetDefaults() {
	if c.ClientID == "" {
		c.ClientID = c.HostID
	}
	if c.ReorderTimeout == 0 {
		c.ReorderTimeout = DefaultReorderTimeout
	}
	if c.RebirthMinInterval == 0 {
		c.RebirthMinInterval = DefaultRebirthMinInterval
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
}

// Validate reports every problem at once, with keys relative to the
// source's sparkplug section (host_id, groups[1]).
func (c Config) Validate() error {
	var errs []error
	errs = append(errs, mqtt.ValidateBroker(c.URL, c.TLS))
	if c.HostID == "" {
		errs = append(errs, config.Missing("host_id"))
	} else if err := validID(c.HostID); err != nil {
		errs = append(errs, config.Invalid("host_id", "%q %v", c.HostID, err))
	}
	if len(c.ClientID) > 65535 {
		errs = append(errs, config.Invalid("client_id", "is longer than MQTT allows (65535 bytes)"))
	}
	seen := make(map[string]int, len(c.Groups))
	for i, g := range c.Groups {
		key := config.Index("groups", i)
		if err := validID(g); err != nil {
			errs = append(errs, config.Invalid(key, "%q %v", g, err))
		} else if g == typeSTATE {
			errs = append(errs, config.Invalid(key, "STATE is reserved for host application state, not a group id"))
		} else if j, dup := seen[g]; dup {
			errs = append(errs, config.Invalid(key, "%q is already listed in groups[%d]", g, j))
		} else {
			seen[g] = i
		}
	}
	if c.ReorderTimeout < 0 {
		errs = append(errs, config.Invalid("reorder_timeout", "must not be negative, got %s", c.ReorderTimeout))
	}
	if c.RebirthMinInterval < 0 {
		errs = append(errs, config.Invalid("rebirth_min_interval", "must not be negative, got %s", c.RebirthMinInterval))
	}
	if c.KeepAlive < time.Second {
		errs = append(errs, config.Invalid("keep_alive", "must be at least 1s (MQTT counts it in seconds), got %s", c.KeepAlive))
	} else if c.KeepAlive > 65535*time.Second {
		errs = append(errs, config.Invalid("keep_alive", "must be at most 18h12m15s (65535 s), got %s", c.KeepAlive))
	}
	if c.ConnectTimeout <= 0 {
		errs = append(errs, config.Invalid("connect_timeout", "must be positive, got %s", c.ConnectTimeout))
	}
	if c.MaxPayloadBytes < 1 || c.MaxPayloadBytes > maxPayload {
		errs = append(errs, config.Invalid("max_payload_bytes", "must be between 1 and %d, got %d", maxPayload, c.MaxPayloadBytes))
	}
	if c.Workers < 1 || c.Workers > 1024 {
		errs = append(errs, config.Invalid("workers", "must be between 1 and 1024, got %d", c.Workers))
	}
	return errors.Join(errs...)
}

// filters are the topic filters the host subscribes to. Its own STATE
// topic is among them (Sparkplug 3.0 requires it before the birth), so it
// can put itself back online when something else marked it offline.
func (c Config) filters() map[string]byte {
	f := map[string]byte{}
	if len(c.Groups) == 0 {
		f[Namespace+"/#"] = 1
	}
	for _, g := range c.Groups {
		f[Namespace+"/"+g+"/#"] = 1
	}
	f[c.stateTopic()] = 1
	return f
}

func (c Config) stateTopic() string { return Namespace + "/" + typeSTATE + "/" + c.HostID }

// tlsConfig reads the certificate files; nil for plain-text schemes.
func (c Config) tlsConfig() (*tls.Config, error) { return c.TLS.Build(c.URL) }
