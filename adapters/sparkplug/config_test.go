package sparkplug

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

func validConfig() Config {
	return Config{URL: "tcp://127.0.0.1:1883", HostID: "shopfloor"}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(c *Config)
		keys   []string
		msg    string
	}{
		{name: "valid", modify: func(*Config) {}},
		{name: "valid groups and tls", modify: func(c *Config) {
			c.URL = "mqtts://broker:8883"
			c.Groups = []string{"plant1", "plant 2"}
			c.TLS.CAFile = "ca.pem"
		}},
		{name: "missing url and host", modify: func(c *Config) { c.URL, c.HostID = "", "" }, keys: []string{"url", "host_id"}, msg: "is required"},
		{name: "bad scheme", modify: func(c *Config) { c.URL = "http://b:1" }, keys: []string{"url"}, msg: `scheme "http"`},
		{name: "wildcard host id", modify: func(c *Config) { c.HostID = "a/+" }, keys: []string{"host_id"}, msg: "may not contain"},
		{name: "bad groups", modify: func(c *Config) { c.Groups = []string{"a", "", "a", "STATE", "x#"} }, keys: []string{"groups[1]", "groups[2]", "groups[3]", "groups[4]"}},
		{name: "negative durations", modify: func(c *Config) { c.ReorderTimeout, c.RebirthMinInterval = -1, -1 }, keys: []string{"reorder_timeout", "rebirth_min_interval"}},
		{name: "keep alive", modify: func(c *Config) { c.KeepAlive = time.Millisecond }, keys: []string{"keep_alive"}},
		{name: "workers", modify: func(c *Config) { c.Workers = 2000 }, keys: []string{"workers"}},
		{name: "payload", modify: func(c *Config) { c.MaxPayloadBytes = -1 }, keys: []string{"max_payload_bytes"}},
		{name: "cert without key", modify: func(c *Config) { c.URL = "ssl://b:1"; c.TLS.CertFile = "c.pem" }, keys: []string{"tls.key_file"}},
		{name: "tls on plain url", modify: func(c *Config) { c.TLS.CAFile = "ca.pem" }, keys: []string{"tls"}, msg: "plain text"},
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
					t.Fatalf("error %v is not a FieldError", e)
				}
				keys = append(keys, fe.Key)
			}
			if !slices.Equal(keys, tc.keys) {
				t.Fatalf("keys %q, want %q\n%v", keys, tc.keys, err)
			}
			if tc.msg != "" && !strings.Contains(config.Flatten(err)[0].Error(), tc.msg) {
				t.Errorf("first error %q does not mention %q", config.Flatten(err)[0], tc.msg)
			}
		})
	}
}

func TestSetDefaultsAndFilters(t *testing.T) {
	c := validConfig()
	c.SetDefaults()
	if c.ClientID != "shopfloor" || c.ReorderTimeout != DefaultReorderTimeout || c.RebirthMinInterval != DefaultRebirthMinInterval ||
		c.KeepAlive != DefaultKeepAlive || c.Workers != DefaultWorkers || c.MaxPayloadBytes != DefaultMaxPayloadBytes {
		t.Errorf("defaults %+v", c)
	}
	if got := slices.Sorted(maps.Keys(c.filters())); !slices.Equal(got, []string{"spBv1.0/#", "spBv1.0/STATE/shopfloor"}) {
		t.Errorf("filters %q", got)
	}
	c.Groups = []string{"g1", "g2"}
	if got := slices.Sorted(maps.Keys(c.filters())); !slices.Equal(got, []string{"spBv1.0/STATE/shopfloor", "spBv1.0/g1/#", "spBv1.0/g2/#"}) {
		t.Errorf("filters %q", got)
	}
}

// TestConfigLoad checks the yaml tags against the strict loader.
func TestConfigLoad(t *testing.T) {
	const doc = `url: tcp://127.0.0.1:1883
host_id: agent
password: ${MQTT_PASSWORD}
groups: [plant1, "bad/group"]
reorder_timeout: 500ms
rebirth_min_interval: 10s
persistent_session: true
tls:
  server_name: broker
`
	env := func(k string) (string, bool) { return "s3cret", k == "MQTT_PASSWORD" }
	var c Config
	err := config.Parse("sparkplug.yaml", []byte(doc), &c, env)
	var ps config.Problems
	if !errors.As(err, &ps) {
		t.Fatalf("err = %v, want Problems", err)
	}
	var got []string
	for _, p := range ps {
		got = append(got, p.Key)
	}
	// Both problems at once: the bad group and a tls section on a plain
	// tcp:// URL.
	if want := []string{"groups[1]", "tls"}; !slices.Equal(got, want) {
		t.Fatalf("problem keys %q, want %q\n%v", got, want, err)
	}
	if c.Password.Reveal() != "s3cret" || c.ReorderTimeout != 500*time.Millisecond || c.RebirthMinInterval != 10*time.Second || !c.PersistentSession || c.ClientID != "agent" {
		t.Errorf("decoded %+v", c)
	}
}

func TestNewRefusesBadConfigAndTLSFiles(t *testing.T) {
	if _, err := New(Config{}, nil); err == nil {
		t.Error("empty config accepted")
	}
	c := validConfig()
	c.URL = "ssl://127.0.0.1:8883"
	c.TLS.CAFile = t.TempDir() + "/missing.pem"
	if _, err := New(c, nil); err == nil || !strings.Contains(err.Error(), "tls.ca_file") {
		t.Errorf("err = %v, want a tls.ca_file error", err)
	}
}
