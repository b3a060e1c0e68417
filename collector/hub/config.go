package hub

import (
	"errors"
	"math"
	"net/url"
	"strings"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/config"
	"github.com/noordoostpolder/shopfloor/collector/share"
)

// Defaults applied by SetDefaults.
const (
	// DefaultK is the smallest number of firms a published figure stands
	// for: with five, no firm can work out another's value from its own
	// and the quartiles.
	DefaultK = 5
	// DefaultGroup is the shared-subscription group of the hubs.
	DefaultGroup = "shopfloor-hub"
	// DefaultClientID names the hub's persistent session.
	DefaultClientID = "shopfloor-hub"
	// DefaultGrace gives agents time after the end of an hour: their
	// hour is final a minute or two after it (lateness plus settle), and
	// an uplink may be down for a while.
	DefaultGrace = 15 * time.Minute
	// DefaultQuiet closes a period only after contributions to it have
	// stopped coming for this long.
	DefaultQuiet = time.Minute
	// DefaultMaxAge is the oldest period a contribution may be for; the
	// hub remembers closed periods this long, so a late one is refused
	// instead of opening the period again with fewer firms.
	DefaultMaxAge = 48 * time.Hour
	// DefaultMeasurement is the benchmark measurement (DESIGN.md).
	DefaultMeasurement = "benchmark"
	// DefaultTimeout bounds one write to InfluxDB.
	DefaultTimeout = 10 * time.Second
)

// Config is the hub's section: where contributions come from, how they
// are published and how private the result is.
type Config struct {
	// DataDir keeps the contributions of open periods across restarts.
	DataDir string `yaml:"data_dir"`
	// Broker is the cluster's MQTT broker; ClientID defaults to
	// shopfloor-hub and must differ between hubs.
	Broker share.BrokerConfig `yaml:"broker"`
	// Group is the shared-subscription group. Hubs in one group may
	// handle the same classes: the broker hands each firm's message to
	// one of them, which stores it and passes it on to the others under
	// <topic_prefix>/hub/<group>/contrib/ (QoS 1, not retained, stamped
	// with when it was accepted), so every hub aggregates every
	// contribution and writes the same points. Of one firm's
	// contributions to a period the newest stamp wins, so keep the hubs'
	// clocks NTP-synced: only replacements sent within the clock skew of
	// each other can be misordered. With epsilon > 0 give every hub of
	// the group the same secret file (<data_dir>/secret), or they draw
	// different noise; and each hub its own broker.client_id.
	Group string `yaml:"group"`
	// TopicPrefix must match the agents' share.topic_prefix.
	TopicPrefix string `yaml:"topic_prefix"`
	// Classes limits this hub to some machine classes; empty means all.
	Classes []string `yaml:"classes"`
	// InfluxDB is the cluster's database.
	InfluxDB InfluxConfig `yaml:"influxdb"`
	// K is the least number of distinct firms behind a published KPI.
	K int `yaml:"k"`
	// Epsilon, when above 0, adds Laplace noise to every published
	// quartile; smaller means more noise. See README (cluster section).
	// The noise is drawn from a generator seeded with HMAC-SHA256 keyed
	// with the hub secret, <data_dir>/secret (32 random bytes created on
	// first start), over the period and its contributions.
	Epsilon float64 `yaml:"epsilon"`
	// Retention keeps raw contributions in the state file this long after
	// their period was published; 0 discards them at once.
	Retention time.Duration `yaml:"retention"`
	Grace     time.Duration `yaml:"grace"`
	Quiet     time.Duration `yaml:"quiet"`
	MaxAge    time.Duration `yaml:"max_age"`
}

// InfluxConfig is the cluster's InfluxDB, written through the v2 write API
// (InfluxDB 1.8: bucket "db/rp" or "db", token empty or "user:password").
type InfluxConfig struct {
	URL         string        `yaml:"url"`
	Token       config.Secret `yaml:"token"`
	Org         string        `yaml:"org"`
	Bucket      string        `yaml:"bucket"`
	Measurement string        `yaml:"measurement"`
	Timeout     time.Duration `yaml:"timeout"`
}

// SetDefaults fills unset values.
func (c *Config) SetDefaults() {
	c.Broker.SetDefaults()
	if c.Broker.ClientID == "" {
		c.Broker.ClientID = DefaultClientID
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = share.DefaultTopicPrefix
	}
	if c.K == 0 {
		c.K = DefaultK
	}
	if c.Grace == 0 {
		c.Grace = DefaultGrace
	}
	if c.Quiet == 0 {
		c.Quiet = DefaultQuiet
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.InfluxDB.Measurement == "" {
		c.InfluxDB.Measurement = DefaultMeasurement
	}
	if c.InfluxDB.Timeout == 0 {
		c.InfluxDB.Timeout = DefaultTimeout
	}
}

// Validate reports every problem, with keys relative to the hub section.
func (c Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.DataDir) == "" {
		errs = append(errs, config.Missing("data_dir"))
	}
	errs = append(errs, config.Nest("broker", c.Broker.Validate()))
	if strings.ContainsAny(c.Group, "/+#") {
		errs = append(errs, config.Invalid("group", "%q must not contain '/', '+' or '#'", c.Group))
	}
	if c.TopicPrefix == "" || strings.ContainsAny(c.TopicPrefix, "+#") || strings.HasPrefix(c.TopicPrefix, "$") {
		errs = append(errs, config.Invalid("topic_prefix", "%q must be a plain topic such as shopfloor/v1", c.TopicPrefix))
	}
	for i, cl := range c.Classes {
		if !share.ValidClass(cl) {
			errs = append(errs, config.Invalid(config.Index("classes", i), "%q is not a class name (lower-case letters, digits, '-', '_')", cl))
		}
	}
	errs = append(errs, config.Nest("influxdb", c.InfluxDB.Validate()))
	if c.K < 3 {
		errs = append(errs, config.Invalid("k", "is %d; it must be at least 3 (default 5): below that a firm can work out the others' values", c.K))
	}
	if c.Epsilon < 0 || math.IsNaN(c.Epsilon) || math.IsInf(c.Epsilon, 0) {
		errs = append(errs, config.Invalid("epsilon", "must be 0 (no noise) or a positive number such as 1"))
	}
	for key, d := range map[string]time.Duration{"retention": c.Retention, "grace": c.Grace, "quiet": c.Quiet, "max_age": c.MaxAge} {
		if d < 0 {
			errs = append(errs, config.Invalid(key, "must not be negative"))
		}
	}
	if c.MaxAge > 0 && c.MaxAge < time.Hour+c.Grace {
		errs = append(errs, config.Invalid("max_age", "%s is shorter than an hour plus grace, so contributions would be refused before their period closes", c.MaxAge))
	}
	return errors.Join(errs...)
}

// Validate reports every problem of the InfluxDB section.
func (c InfluxConfig) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, config.Missing("url"))
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, config.Invalid("url", "%q is not an http:// or https:// address", c.URL))
	}
	if c.Bucket == "" {
		errs = append(errs, config.Missing("bucket"))
	}
	if c.Timeout < 0 {
		errs = append(errs, config.Invalid("timeout", "must not be negative"))
	}
	return errors.Join(errs...)
}
