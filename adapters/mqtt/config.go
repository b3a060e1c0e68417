// Package mqtt reads JSON telemetry from an MQTT broker (MQTT 3.1.1 through
// github.com/eclipse/paho.mqtt.golang) and hands it to the collector.
//
// Delivery is at least once: subscriptions use QoS 1 in a persistent session
// and a message is acknowledged to the broker only after the collector
// accepted its samples (or counted it as bad input), so whatever arrives
// while the agent is down or its queue is full stays at the broker.
package mqtt

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

// Defaults applied by SetDefaults.
const (
	// DefaultKeepAlive is short enough that a dead TCP connection (a
	// pulled cable, a NAT that forgot us) is noticed within a minute.
	DefaultKeepAlive = 30 * time.Second
	// DefaultConnectTimeout covers a TLS handshake over a slow shop-floor
	// link without leaving the supervisor waiting for long.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultMaxPayloadBytes is far above any machine telemetry message, and
	// low enough that a runaway publisher cannot make the agent hold
	// megabytes per message.
	DefaultMaxPayloadBytes = 256 << 10
	// DefaultWorkers is enough to overlap JSON decoding with a blocked
	// Emit on small edge boxes.
	DefaultWorkers = 2
	// DefaultQoS is 1 because QoS 0 messages are lost while the agent is
	// away, which breaks the at-least-once promise.
	DefaultQoS = 1
)

// maxPayload is the largest payload the MQTT protocol can carry.
const maxPayload = 268435455

// Config is one MQTT source. The zero value of a field means its default
// (see SetDefaults), except where noted.
type Config struct {
	// URL of the broker: tcp://, mqtt://, ssl://, tls://, mqtts://, ws://
	// or wss:// followed by host:port.
	URL string `yaml:"url"`
	// ClientID names the broker session. It is required with a persistent
	// session, because the broker keeps queued messages under this id.
	ClientID string        `yaml:"client_id"`
	Username string        `yaml:"username"`
	Password config.Secret `yaml:"password"`
	// CleanSession false (the default) asks the broker to keep the
	// subscriptions and queue QoS 1 messages while the agent is away.
	CleanSession bool `yaml:"clean_session"`
	// KeepAlive is the MQTT keep-alive; a silent connection is declared
	// lost after about one and a half of these.
	KeepAlive time.Duration `yaml:"keep_alive"`
	// ConnectTimeout bounds the TCP/TLS connect, CONNACK and SUBACK waits.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// MaxPayloadBytes is the largest payload decoded; larger ones are
	// counted as bad input "oversized" and acknowledged.
	MaxPayloadBytes int `yaml:"max_payload_bytes"`
	// Workers decode and emit messages in parallel. Messages are sharded
	// by topic, so the messages of one topic keep their order.
	Workers int `yaml:"workers"`
	// Connections above 1 open that many connections, as client_id-1 ...
	// client_id-N, each subscribing to every filter as a shared
	// subscription ($share/<share_group>/<filter>), so the broker spreads
	// the messages over them. A broker sends each connection only a few
	// QoS 1 messages before their PUBACKs (Mosquitto: 20), which bounds
	// what one connection can take; several take more. Messages of one
	// topic may then be handled out of order (their timestamps keep
	// them apart in the database).
	Connections int `yaml:"connections"`
	// ShareGroup names the shared subscription; empty means client_id.
	ShareGroup string `yaml:"share_group"`
	// TLS is used for the ssl, tls, mqtts and wss schemes.
	TLS TLSConfig `yaml:"tls"`
	// Subscriptions are the topic filters to read, at least one.
	Subscriptions []Subscription `yaml:"subscriptions"`
}

// TLSConfig locates the certificates for a TLS connection. Files are read
// on every connect, so renewed certificates are picked up at the next
// reconnect without a restart.
type TLSConfig struct {
	// CAFile is a PEM bundle of the CAs that may sign the broker's
	// certificate; empty means the system pool.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the client certificate and its key, for
	// brokers that authenticate clients by certificate. They go together.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the host name checked against the broker's
	// certificate, for brokers reached by IP address.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify turns off the broker certificate check. It exists
	// for commissioning only; the agent warns when it is on.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

func (t TLSConfig) isSet() bool { return t != TLSConfig{} }

// Subscription is one topic filter and how to read its payloads.
type Subscription struct {
	// Topic is an MQTT topic filter; + matches one level, a final # the
	// rest.
	Topic string `yaml:"topic"`
	// QoS is 0 or 1; nil means DefaultQoS. It is a pointer so an explicit
	// 0 can be told from an unset key.
	QoS *int `yaml:"qos"`
	// JSON says how a payload becomes samples.
	JSON JSONFormat `yaml:"json"`
}

// TimeFormat says how the time field of a payload is read.
type TimeFormat string

// Time formats. TimeAuto reads RFC 3339 strings and guesses the unit of a
// Unix timestamp from its magnitude, which is unambiguous for any date
// between 1973 and 5138.
const (
	TimeAuto    TimeFormat = "auto"
	TimeUnixS   TimeFormat = "unix_s"
	TimeUnixMS  TimeFormat = "unix_ms"
	TimeUnixUS  TimeFormat = "unix_us"
	TimeUnixNS  TimeFormat = "unix_ns"
	TimeRFC3339 TimeFormat = "rfc3339"
)

// UnknownFields says what happens to a payload field that is not in
// JSONFormat.Fields.
type UnknownFields string

// Unknown field policies.
const (
	// UnknownPass emits it like any other field: the collector's mapping
	// decides, and nothing is lost silently.
	UnknownPass UnknownFields = "pass"
	// UnknownDrop leaves it out without complaint.
	UnknownDrop UnknownFields = "drop"
	// UnknownReject refuses the whole message as bad input
	// "unknown_field", for publishers whose schema must not drift.
	UnknownReject UnknownFields = "reject"
)

// JSONFormat describes a JSON payload. The zero value reads a flat or
// nested object, timestamps it with the receive time, and passes every
// field.
type JSONFormat struct {
	// TimeField is the dotted path of the source timestamp inside a
	// reading (or, when Readings is set and a reading has none, inside the
	// payload). Empty means the receive time.
	TimeField string `yaml:"time_field"`
	// TimeFormat is how TimeField is read; empty means TimeAuto.
	TimeFormat TimeFormat `yaml:"time_format"`
	// Readings is the dotted path of an array of reading objects. Empty
	// means the payload is one reading, or, when it is a top-level array,
	// that each element is a reading.
	Readings string `yaml:"readings"`
	// UnknownFields applies only when Fields is set; empty means
	// UnknownPass.
	UnknownFields UnknownFields `yaml:"unknown_fields"`
	// Fields is an optional allow-list of dotted field paths; a path also
	// allows everything below it (axis allows axis.x.load).
	Fields []string `yaml:"fields"`
}

// maxConnections bounds connections: each costs a session on the broker.
const maxConnections = 64

// clientIDs are the ids of the connections a Run opens.
func (c Config) clientIDs() []string {
	if c.Connections <= 1 {
		return []string{c.ClientID}
	}
	ids := make([]string, c.Connections)
	for i := range ids {
		ids[i] = connectionID(c.ClientID, i+1)
	}
	return ids
}

func connectionID(clientID string, n int) string { return clientID + "-" + strconv.Itoa(n) }

// filters maps each subscription's topic to the filter subscribed: itself,
// or with several connections its shared form.
func (c Config) filters() map[string]string {
	m := make(map[string]string, len(c.Subscriptions))
	for _, s := range c.Subscriptions {
		m[s.Topic] = s.Topic
		if c.Connections > 1 {
			m[s.Topic] = "$share/" + c.ShareGroup + "/" + s.Topic
		}
	}
	return m
}

// SetDefaults fills unset values. It is idempotent, so New can call it
// again on a config the loader already defaulted.
func (c *Config) SetDefaults() {
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
	if c.Connections == 0 {
		c.Connections = 1
	}
	if c.ShareGroup == "" {
		c.ShareGroup = c.ClientID
	}
	for i := range c.Subscriptions {
		s := &c.Subscriptions[i]
		if s.QoS == nil {
			q := DefaultQoS
			s.QoS = &q
		}
		s.JSON.SetDefaults()
	}
}

// SetDefaults fills the time format and unknown field policy.
func (f *JSONFormat) SetDefaults() {
	if f.TimeFormat == "" {
		f.TimeFormat = TimeAuto
	}
	if f.UnknownFields == "" {
		f.UnknownFields = UnknownPass
	}
}

// scheme reports whether paho understands a URL scheme and whether it
// means TLS.
func scheme(s string) (isTLS, ok bool) {
	switch strings.ToLower(s) {
	case "tcp", "mqtt", "ws":
		return false, true
	case "ssl", "tls", "mqtts", "wss":
		return true, true
	}
	return false, false
}

const schemeList = "tcp, mqtt, ssl, tls, mqtts, ws or wss"

// usesTLS reports whether the URL's scheme means a TLS connection.
func usesTLS(rawURL string) bool {
	u, err := url.Parse(rawURL)
	if err != nil {
		return false
	}
	isTLS, _ := scheme(u.Scheme)
	return isTLS
}

// Validate reports every problem at once, with keys relative to the
// source's config (url, subscriptions[2].json.time_format).
func (c Config) Validate() error {
	var errs []error
	errs = append(errs, ValidateBroker(c.URL, c.TLS))
	if !c.CleanSession && c.ClientID == "" {
		errs = append(errs, config.Invalid("client_id", "is required unless clean_session is true: the broker keeps the persistent session, and the messages queued in it, under this id"))
	}
	if len(c.ClientID) > 65535 {
		errs = append(errs, config.Invalid("client_id", "is longer than MQTT allows (65535 bytes)"))
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
	if c.Connections < 1 || c.Connections > maxConnections {
		errs = append(errs, config.Invalid("connections", "must be between 1 and %d, got %d", maxConnections, c.Connections))
	}
	if c.Connections > 1 {
		if c.ClientID == "" {
			errs = append(errs, config.Invalid("client_id", "is required with connections above 1: the connections are client_id-1 ... client_id-N"))
		}
		if c.ShareGroup == "" || strings.ContainsAny(c.ShareGroup, "/+#") {
			errs = append(errs, config.Invalid("share_group", "must be a name without /, + or # (it defaults to client_id), got %q", c.ShareGroup))
		}
		for i, sub := range c.Subscriptions {
			if strings.HasPrefix(sub.Topic, "$share/") {
				errs = append(errs, config.Invalid(config.Index("subscriptions", i)+".topic", "%q is already a shared subscription; with connections above 1 the agent shares every filter itself (share_group)", sub.Topic))
			}
		}
	}
	if len(c.Subscriptions) == 0 {
		errs = append(errs, config.Invalid("subscriptions", "needs at least one topic filter"))
	}
	seen := make(map[string]int, len(c.Subscriptions))
	for i, s := range c.Subscriptions {
		key := config.Index("subscriptions", i)
		errs = append(errs, config.Nest(key, s.validate()))
		if j, dup := seen[s.Topic]; dup && s.Topic != "" {
			errs = append(errs, config.Invalid(key+".topic", "%q is already subscribed in subscriptions[%d]; the broker keeps one subscription per filter", s.Topic, j))
		} else {
			seen[s.Topic] = i
		}
	}
	return errors.Join(errs...)
}

// ValidateBroker checks a broker URL and the TLS section that goes with
// it, with keys "url" and "tls.*". The MQTT and Sparkplug sources share it
// so both read their connection settings the same way.
func ValidateBroker(rawURL string, t TLSConfig) error {
	var errs []error
	tlsScheme := false
	if rawURL == "" {
		errs = append(errs, config.Missing("url"))
	} else if u, err := url.Parse(rawURL); err != nil {
		errs = append(errs, config.Invalid("url", "is not a URL: %v", err))
	} else if isTLS, ok := scheme(u.Scheme); !ok {
		errs = append(errs, config.Invalid("url", "scheme %q is not supported; use %s, as in tcp://broker:1883", u.Scheme, schemeList))
	} else if u.Host == "" {
		errs = append(errs, config.Invalid("url", "has no host; write scheme://host:port, as in tcp://broker:1883"))
	} else {
		tlsScheme = isTLS
	}
	errs = append(errs, config.Nest("tls", t.validate()))
	if t.isSet() && rawURL != "" && !tlsScheme && errors.Join(errs...) == nil {
		errs = append(errs, config.Invalid("tls", "is set but the url scheme does not use TLS, so the connection would be plain text; use ssl://, mqtts:// or wss://"))
	}
	return errors.Join(errs...)
}

func (t TLSConfig) validate() error {
	var errs []error
	if t.CertFile != "" && t.KeyFile == "" {
		errs = append(errs, config.Invalid("key_file", "is required with cert_file: a client certificate needs its private key"))
	}
	if t.KeyFile != "" && t.CertFile == "" {
		errs = append(errs, config.Invalid("cert_file", "is required with key_file: a private key needs its certificate"))
	}
	return errors.Join(errs...)
}

func (s Subscription) validate() error {
	var errs []error
	if s.Topic == "" {
		errs = append(errs, config.Missing("topic"))
	} else if err := validFilter(s.Topic); err != nil {
		errs = append(errs, config.Invalid("topic", "%q is not a valid MQTT topic filter: %v", s.Topic, err))
	}
	if s.QoS != nil {
		switch q := *s.QoS; q {
		case 0, 1:
		case 2:
			errs = append(errs, config.Invalid("qos", "2 is not supported; use 1: the agent acknowledges a message only once it is queued, which gives at-least-once delivery, and a duplicate is harmless (it overwrites the same point)"))
		default:
			errs = append(errs, config.Invalid("qos", "must be 0 or 1, got %d", q))
		}
	}
	errs = append(errs, config.Nest("json", s.JSON.Validate()))
	return errors.Join(errs...)
}

// Validate reports every problem of the format, with keys relative to it.
func (f JSONFormat) Validate() error {
	var errs []error
	switch f.TimeFormat {
	case "", TimeAuto, TimeUnixS, TimeUnixMS, TimeUnixUS, TimeUnixNS, TimeRFC3339:
	default:
		errs = append(errs, config.Invalid("time_format", "%q is not a time format; use auto, unix_s, unix_ms, unix_us, unix_ns or rfc3339", f.TimeFormat))
	}
	switch f.UnknownFields {
	case "", UnknownPass:
	case UnknownDrop, UnknownReject:
		if len(f.Fields) == 0 {
			errs = append(errs, config.Invalid("unknown_fields", "%q needs a fields list to say which fields are known", f.UnknownFields))
		}
	default:
		errs = append(errs, config.Invalid("unknown_fields", "%q is not a policy; use pass, drop or reject", f.UnknownFields))
	}
	if f.TimeField != "" {
		if err := validPath(f.TimeField); err != nil {
			errs = append(errs, config.Invalid("time_field", "%v", err))
		}
	}
	if f.Readings != "" {
		if err := validPath(f.Readings); err != nil {
			errs = append(errs, config.Invalid("readings", "%v", err))
		}
	}
	for i, p := range f.Fields {
		if err := validPath(p); err != nil {
			errs = append(errs, config.Invalid(config.Index("fields", i), "%v", err))
		}
	}
	return errors.Join(errs...)
}

func validPath(p string) error {
	if p == "" {
		return errors.New("is empty")
	}
	for seg := range strings.SplitSeq(p, ".") {
		if seg == "" {
			return fmt.Errorf("%q has an empty part; write dotted paths such as axis.x.load", p)
		}
	}
	return nil
}

// validFilter checks an MQTT 3.1.1 topic filter (section 4.7): + fills a
// whole level, # is a whole level and the last one.
func validFilter(f string) error {
	if len(f) > 65535 {
		return errors.New("longer than 65535 bytes")
	}
	if !utf8.ValidString(f) || strings.ContainsRune(f, 0) {
		return errors.New("not valid UTF-8 or contains NUL")
	}
	levels := strings.Split(f, "/")
	if strings.HasPrefix(f, "$share/") {
		if len(levels) < 3 || levels[1] == "" || strings.ContainsAny(levels[1], "+#") {
			return errors.New("a shared subscription is $share/<group>/<filter>")
		}
		levels = levels[2:]
	}
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return errors.New("# must be the last level")
		case l != "#" && strings.Contains(l, "#"):
			return errors.New("# must fill a whole level")
		case l != "+" && strings.Contains(l, "+"):
			return errors.New("+ must fill a whole level")
		}
	}
	return nil
}

// matchTopic reports whether topic matches filter. Wildcards at the first
// level do not match topics starting with $ (MQTT 3.1.1, 4.7.2), so a
// filter "#" does not swallow $SYS.
func matchTopic(filter, topic string) bool {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		_, filter, _ = strings.Cut(rest, "/")
	}
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		if !fmore || !tmore {
			// "a/#" also matches "a" (the parent level).
			return fmore == tmore || (fmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}
