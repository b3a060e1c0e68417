package main

import (
	"errors"
	"net"
	"strings"

	"github.com/noordoostpolder/shopfloor/adapters/influxdb"
	"github.com/noordoostpolder/shopfloor/adapters/mqtt"
	"github.com/noordoostpolder/shopfloor/adapters/opcua"
	"github.com/noordoostpolder/shopfloor/adapters/sparkplug"
	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/config"
	"github.com/noordoostpolder/shopfloor/collector/kpi"
	"github.com/noordoostpolder/shopfloor/collector/share"
)

// Config is the agent's configuration file. Every section validates
// itself; Config only adds what spans sections (unique source names) and
// nests the keys so that problems point at the right line.
type Config struct {
	Agent    AgentConfig              `yaml:"agent"`
	Pipeline collector.PipelineConfig `yaml:"pipeline"`
	Sources  []SourceConfig           `yaml:"sources"`
	Sink     SinkConfig               `yaml:"sink"`
	KPI      kpi.Config               `yaml:"kpi"`
	Share    share.Config             `yaml:"share"`
}

// AgentConfig is the process-wide part: where state lives, the HTTP
// listener and logging.
type AgentConfig struct {
	// DataDir holds the agent's state (the store-and-forward queue, the
	// KPI state, certificates). It is created when missing.
	DataDir string     `yaml:"data_dir"`
	HTTP    HTTPConfig `yaml:"http"`
	Log     LogConfig  `yaml:"log"`
}

// HTTPConfig is the listener for the status page, /api/status, /metrics,
// /healthz and /readyz.
type HTTPConfig struct {
	// Listen is host:port. The default binds to loopback only; bound
	// elsewhere, set Auth.
	Listen string `yaml:"listen"`
	// Auth protects the status page, /api/ and /debug/ (not /metrics,
	// /healthz and /readyz, which monitoring polls).
	Auth HTTPAuth `yaml:"auth"`
	// Pprof serves Go's profiler under /debug/pprof/, for finding where
	// the agent spends its time. Off by default: profiles reveal internals
	// and cost CPU while taken.
	Pprof bool `yaml:"pprof"`
}

// HTTPAuth is basic auth, a bearer token, or both; either one admits.
type HTTPAuth struct {
	Username string        `yaml:"username"`
	Password config.Secret `yaml:"password"`
	Token    config.Secret `yaml:"token"`
}

// enabled reports whether any credential is set.
func (h HTTPAuth) enabled() bool { return h.Username != "" || h.Token != "" }

// LogConfig chooses the log level and format.
type LogConfig struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text (logfmt-like, for people) or json (for log shippers).
	Format string `yaml:"format"`
}

// SourceConfig is one source: exactly one protocol section, plus how its
// data is placed on the asset tree and mapped to canonical signals.
type SourceConfig struct {
	// Name identifies the source in metrics, logs and /readyz.
	Name    string                  `yaml:"name"`
	Asset   collector.AssetRule     `yaml:"asset"`
	Mapping []collector.MappingRule `yaml:"mapping"`
	// Exactly one protocol section.
	MQTT      *mqtt.Config      `yaml:"mqtt"`
	Sparkplug *sparkplug.Config `yaml:"sparkplug"`
	OPCUA     *opcua.Config     `yaml:"opcua"`
}

// protocols counts the protocol sections set.
func (s SourceConfig) protocols() int {
	n := 0
	for _, set := range []bool{s.MQTT != nil, s.Sparkplug != nil, s.OPCUA != nil} {
		if set {
			n++
		}
	}
	return n
}

// SinkConfig is where samples go. Only InfluxDB exists today; it is a
// section of its own so another sink does not change the file's shape.
type SinkConfig struct {
	InfluxDB *influxdb.Config `yaml:"influxdb"`
}

// Defaults.
const (
	DefaultDataDir    = "./data"
	DefaultHTTPListen = "127.0.0.1:9180"
)

// samplesPerPoint converts the sink's batch_size, in points (lines), to
// the pipeline's batch, in samples: a machine's message typically carries
// about this many fields, which become one point. The pipeline once took
// batch_size samples, so a request held a sixth of the points it was
// meant to; at 1M messages (6 fields) that cost 15 % of the throughput and
// doubled the p99. The sink still cuts requests at batch_size points.
const samplesPerPoint = 6

// SetDefaults fills unset values of every section; the loader calls it on
// the root only.
func (c *Config) SetDefaults() {
	if c.Agent.DataDir == "" {
		c.Agent.DataDir = DefaultDataDir
	}
	if c.Agent.HTTP.Listen == "" {
		c.Agent.HTTP.Listen = DefaultHTTPListen
	}
	if c.Agent.Log.Level == "" {
		c.Agent.Log.Level = "info"
	}
	if c.Agent.Log.Format == "" {
		c.Agent.Log.Format = "text"
	}
	if s := c.Sink.InfluxDB; s != nil {
		s.SetDefaults()
		// An invalid value is reported once, under the sink's key; the
		// pipeline then keeps its own default.
		if s.BatchSize > 0 {
			c.Pipeline.BatchSize = s.BatchSize * samplesPerPoint
		}
		if s.FlushInterval > 0 {
			c.Pipeline.FlushInterval = s.FlushInterval
		}
		if s.MaxInFlight > 0 {
			c.Pipeline.MaxInFlight = s.MaxInFlight
		}
	}
	c.Pipeline.SetDefaults()
	c.KPI.SetDefaults()
	c.Share.SetDefaults()
	for i := range c.Sources {
		if m := c.Sources[i].MQTT; m != nil {
			m.SetDefaults()
		}
		if sp := c.Sources[i].Sparkplug; sp != nil {
			sp.SetDefaults()
		}
		if o := c.Sources[i].OPCUA; o != nil {
			o.SetDefaults()
		}
	}
}

// Validate reports every problem of every section at once.
func (c Config) Validate() error {
	var errs []error
	errs = append(errs, config.Nest("agent", c.Agent.Validate()))
	errs = append(errs, config.Nest("pipeline", c.Pipeline.Validate()))
	errs = append(errs, config.Nest("kpi", c.KPI.Validate()))
	errs = append(errs, config.Nest("share", c.Share.Validate()))
	if c.Share.Enabled && !c.KPI.Enabled {
		errs = append(errs, config.Invalid("share.enabled", "shares the KPIs, so it needs kpi.enabled: true"))
	}
	if len(c.Sources) == 0 {
		errs = append(errs, config.Invalid("sources", "needs at least one source, such as an mqtt section; see deploy/examples/mqtt-json.yaml"))
	}
	seen := map[string]bool{}
	for i, s := range c.Sources {
		key := config.Index("sources", i)
		errs = append(errs, config.Nest(key, s.Validate()))
		if s.Name != "" && seen[s.Name] {
			errs = append(errs, config.Invalid(key+".name", "%q is used by an earlier source; names must be unique because metrics and logs use them", s.Name))
		}
		seen[s.Name] = true
	}
	if c.Sink.InfluxDB == nil {
		errs = append(errs, config.Missing("sink.influxdb"))
	} else {
		errs = append(errs, config.Nest("sink.influxdb", c.Sink.InfluxDB.Validate()))
	}
	return errors.Join(errs...)
}

// Validate checks the process-wide settings.
func (a AgentConfig) Validate() error {
	var errs []error
	if strings.TrimSpace(a.DataDir) == "" {
		errs = append(errs, config.Missing("data_dir"))
	}
	if _, _, err := net.SplitHostPort(a.HTTP.Listen); err != nil {
		errs = append(errs, config.Invalid("http.listen", "%q is not host:port (use 127.0.0.1:9180, or :9180 for every interface): %v", a.HTTP.Listen, err))
	}
	if (a.HTTP.Auth.Username == "") != (a.HTTP.Auth.Password == "") {
		errs = append(errs, config.Invalid("http.auth", "username and password go together"))
	}
	if _, err := parseLevel(a.Log.Level); err != nil {
		errs = append(errs, config.Invalid("log.level", "%v", err))
	}
	if a.Log.Format != "text" && a.Log.Format != "json" {
		errs = append(errs, config.Invalid("log.format", "%q is not a log format; use text or json", a.Log.Format))
	}
	return errors.Join(errs...)
}

// Validate checks one source and its normalisation rules.
func (s SourceConfig) Validate() error {
	var errs []error
	switch {
	case s.Name == "":
		errs = append(errs, config.Missing("name"))
	case strings.Trim(s.Name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != "":
		errs = append(errs, config.Invalid("name", "%q may only hold letters, digits, '_', '.' and '-', so that it reads well in metrics and logs", s.Name))
	}
	switch {
	case s.protocols() == 0:
		errs = append(errs, config.Invalid("mqtt", "is missing: a source needs one protocol section, mqtt, sparkplug or opcua"))
	case s.protocols() > 1:
		errs = append(errs, config.Invalid("name", "a source has one protocol section (mqtt, sparkplug or opcua); split it into one source each"))
	case s.MQTT != nil:
		errs = append(errs, config.Nest("mqtt", s.MQTT.Validate()))
	case s.Sparkplug != nil:
		errs = append(errs, config.Nest("sparkplug", s.Sparkplug.Validate()))
	default:
		errs = append(errs, config.Nest("opcua", s.OPCUA.Validate()))
	}
	errs = append(errs, s.normalize().Validate())
	return errors.Join(errs...)
}

func (s SourceConfig) normalize() collector.NormalizeConfig {
	return collector.NormalizeConfig{Asset: s.Asset, Mapping: s.Mapping}
}
