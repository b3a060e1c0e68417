package mqtt

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

func qos(q int) *int { return &q }

func validConfig() Config {
	return Config{
		URL:      "tcp://127.0.0.1:1883",
		ClientID: "shopfloor-agent",
		Subscriptions: []Subscription{
			{Topic: "factory/+/+/telemetry", QoS: qos(1), JSON: JSONFormat{TimeField: "ts"}},
		},
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(c *Config)
		keys   []string // the keys of the FieldErrors, in order
		msg    string   // a part of the message of the first error
	}{
		{name: "valid", modify: func(*Config) {}},
		{name: "valid tls", modify: func(c *Config) {
			c.URL = "mqtts://broker:8883"
			c.TLS = TLSConfig{CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "k.pem"}
		}},
		{name: "valid clean session without client id", modify: func(c *Config) { c.ClientID, c.CleanSession = "", true }},
		{name: "missing url", modify: func(c *Config) { c.URL = "" }, keys: []string{"url"}, msg: "is required"},
		{name: "bad scheme", modify: func(c *Config) { c.URL = "http://broker:1883" }, keys: []string{"url"}, msg: `scheme "http"`},
		{name: "no host", modify: func(c *Config) { c.URL = "tcp://" }, keys: []string{"url"}, msg: "no host"},
		{name: "persistent session needs client id", modify: func(c *Config) { c.ClientID = "" }, keys: []string{"client_id"}, msg: "clean_session"},
		{name: "qos 2", modify: func(c *Config) { c.Subscriptions[0].QoS = qos(2) }, keys: []string{"subscriptions[0].qos"}, msg: "2 is not supported"},
		{name: "qos 3", modify: func(c *Config) { c.Subscriptions[0].QoS = qos(3) }, keys: []string{"subscriptions[0].qos"}, msg: "must be 0 or 1"},
		{name: "hash not last", modify: func(c *Config) { c.Subscriptions[0].Topic = "a/#/b" }, keys: []string{"subscriptions[0].topic"}, msg: "# must be the last level"},
		{name: "partial plus", modify: func(c *Config) { c.Subscriptions[0].Topic = "a/b+/c" }, keys: []string{"subscriptions[0].topic"}, msg: "+ must fill a whole level"},
		{name: "partial hash", modify: func(c *Config) { c.Subscriptions[0].Topic = "a/b#" }, keys: []string{"subscriptions[0].topic"}, msg: "# must fill a whole level"},
		{name: "missing topic", modify: func(c *Config) { c.Subscriptions[0].Topic = "" }, keys: []string{"subscriptions[0].topic"}, msg: "is required"},
		{name: "duplicate topic", modify: func(c *Config) {
			c.Subscriptions = append(c.Subscriptions, c.Subscriptions[0])
		}, keys: []string{"subscriptions[1].topic"}, msg: "already subscribed"},
		{name: "no subscriptions", modify: func(c *Config) { c.Subscriptions = nil }, keys: []string{"subscriptions"}},
		{name: "cert without key", modify: func(c *Config) {
			c.URL = "ssl://broker:8883"
			c.TLS.CertFile = "c.pem"
		}, keys: []string{"tls.key_file"}, msg: "cert_file"},
		{name: "key without cert", modify: func(c *Config) {
			c.URL = "ssl://broker:8883"
			c.TLS.KeyFile = "k.pem"
		}, keys: []string{"tls.cert_file"}},
		{name: "tls on a plain url", modify: func(c *Config) { c.TLS.CAFile = "ca.pem" }, keys: []string{"tls"}, msg: "plain text"},
		{name: "bad time format", modify: func(c *Config) { c.Subscriptions[0].JSON.TimeFormat = "unix" },
			keys: []string{"subscriptions[0].json.time_format"}, msg: `"unix"`},
		{name: "bad unknown_fields", modify: func(c *Config) { c.Subscriptions[0].JSON.UnknownFields = "keep" },
			keys: []string{"subscriptions[0].json.unknown_fields"}},
		{name: "reject without fields", modify: func(c *Config) { c.Subscriptions[0].JSON.UnknownFields = UnknownReject },
			keys: []string{"subscriptions[0].json.unknown_fields"}, msg: "fields list"},
		{name: "bad paths", modify: func(c *Config) {
			c.Subscriptions[0].JSON.TimeField = "a..b"
			c.Subscriptions[0].JSON.Readings = ".data"
			c.Subscriptions[0].JSON.Fields = []string{"ok", ""}
		}, keys: []string{"subscriptions[0].json.time_field", "subscriptions[0].json.readings", "subscriptions[0].json.fields[1]"}},
		{name: "numbers", modify: func(c *Config) {
			c.KeepAlive = 500 * time.Millisecond
			c.ConnectTimeout = -1
			c.MaxPayloadBytes = -1
			c.Workers = -1
		}, keys: []string{"keep_alive", "connect_timeout", "max_payload_bytes", "workers"}},
		{name: "valid connections", modify: func(c *Config) { c.Connections = 4 }},
		{name: "too many connections", modify: func(c *Config) { c.Connections = 65 }, keys: []string{"connections"}, msg: "between 1 and 64"},
		{name: "connections need a client id", modify: func(c *Config) { c.Connections, c.ClientID, c.CleanSession = 2, "", true },
			keys: []string{"client_id", "share_group"}, msg: "client_id-1"},
		{name: "bad share group", modify: func(c *Config) { c.Connections, c.ShareGroup = 2, "a/b" }, keys: []string{"share_group"}, msg: "without /"},
		{name: "already shared", modify: func(c *Config) { c.Connections, c.Subscriptions[0].Topic = 2, "$share/g/a/b" },
			keys: []string{"subscriptions[0].topic"}, msg: "already a shared subscription"},
		{name: "every problem at once", modify: func(c *Config) {
			c.URL = ""
			c.Subscriptions = append(c.Subscriptions, Subscription{Topic: "x/#/y", QoS: qos(2), JSON: JSONFormat{TimeFormat: "bad"}})
		}, keys: []string{"url", "subscriptions[1].topic", "subscriptions[1].qos", "subscriptions[1].json.time_format"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.modify(&c)
			c.SetDefaults()
			err := c.Validate()
			var keys []string
			for _, e := range config.Flatten(err) {
				var fe *config.FieldError
				if !errors.As(e, &fe) {
					t.Fatalf("error %v is not a *config.FieldError", e)
				}
				keys = append(keys, fe.Key)
			}
			if !slices.Equal(keys, tc.keys) {
				t.Fatalf("keys = %q, want %q (err: %v)", keys, tc.keys, err)
			}
			if tc.msg != "" && !strings.Contains(config.Flatten(err)[0].Error(), tc.msg) {
				t.Errorf("first error %q does not mention %q", config.Flatten(err)[0], tc.msg)
			}
		})
	}
}

func TestSetDefaults(t *testing.T) {
	c := Config{Subscriptions: []Subscription{{Topic: "a"}}}
	c.SetDefaults()
	if c.KeepAlive != 30*time.Second || c.ConnectTimeout != 10*time.Second || c.MaxPayloadBytes != 262144 || c.Workers != 2 {
		t.Errorf("defaults = %+v", c)
	}
	s := c.Subscriptions[0]
	if s.QoS == nil || *s.QoS != 1 || s.JSON.TimeFormat != TimeAuto || s.JSON.UnknownFields != UnknownPass {
		t.Errorf("subscription defaults = %+v", s)
	}
	c.Subscriptions[0].QoS = qos(0)
	c.SetDefaults()
	if *c.Subscriptions[0].QoS != 0 {
		t.Error("SetDefaults overwrote an explicit qos 0")
	}
}

// TestConfigLoad checks the yaml tags against the loader: strict keys,
// durations, the secret type, and line numbers from Validate's keys.
func TestConfigLoad(t *testing.T) {
	const doc = `url: tcp://127.0.0.1:1883
client_id: agent
password: ${MQTT_PASSWORD}
keep_alive: 15s
tls:
  server_name: broker
subscriptions:
  - topic: factory/+/telemetry
    qos: 0
    json:
      time_field: ts
      time_format: unix_ms
  - topic: a/#/b
    json:
      unknown_fields: drop
`
	env := func(k string) (string, bool) { return "s3cret", k == "MQTT_PASSWORD" }
	var c Config
	err := config.Parse("mqtt.yaml", []byte(doc), &c, env)
	var ps config.Problems
	if !errors.As(err, &ps) {
		t.Fatalf("err = %v, want Problems", err)
	}
	var got []string
	for _, p := range ps {
		got = append(got, p.Key)
	}
	want := []string{"tls", "subscriptions[1].topic", "subscriptions[1].json.unknown_fields"}
	if !slices.Equal(got, want) {
		t.Fatalf("problem keys = %q, want %q\n%v", got, want, err)
	}
	if ps[1].Line != 13 {
		t.Errorf("subscriptions[1].topic reported at line %d, want 13", ps[1].Line)
	}
	if c.Password.Reveal() != "s3cret" || c.KeepAlive != 15*time.Second || *c.Subscriptions[0].QoS != 0 || *c.Subscriptions[1].QoS != 1 {
		t.Errorf("decoded %+v", c)
	}
}

func TestMatchTopic(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+/c", "a/x/c", true},
		{"a/+/c", "a/x/y/c", false},
		{"a/#", "a/x/y", true},
		{"a/#", "a", true},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"a/+", "a/", true},
		{"a/+", "a", false},
		{"a/b", "a/b/c", false},
		{"$share/g/a/+", "a/b", true},
	}
	for _, tc := range tests {
		if got := matchTopic(tc.filter, tc.topic); got != tc.want {
			t.Errorf("matchTopic(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestShardOfKeepsTopicsApart(t *testing.T) {
	seen := map[int]bool{}
	for _, topic := range []string{"factory/l1/m1/telemetry", "factory/l1/m2/telemetry", "factory/l2/m3/telemetry", "factory/l2/m4/telemetry"} {
		s := shardOf(topic, 4)
		if s != shardOf(topic, 4) || s < 0 || s >= 4 {
			t.Fatalf("shardOf(%q) = %d, not stable or out of range", topic, s)
		}
		seen[s] = true
	}
	if len(seen) < 2 {
		t.Errorf("four topics all landed on one shard")
	}
}
