package share

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

// Defaults applied by SetDefaults.
const (
	// DefaultPeriod is the hour: fine enough for a cluster to see a
	// morning's trouble, coarse enough to say nothing about single events.
	DefaultPeriod = "1h"
	// DefaultSettle lets the other machines of a class catch up (a
	// source's backlog after a network blip) after the first one's hour
	// is final, so one contribution usually covers every machine.
	DefaultSettle = 2 * time.Minute
	// DefaultMaxWait bounds the wait for a machine that never finishes
	// its hour; the engine normally finishes a silent machine's hour after
	// its max_gap.
	DefaultMaxWait = time.Hour
	// DefaultTopicPrefix is the root of the cluster's topic tree; the
	// version in it lets a future format live beside this one.
	DefaultTopicPrefix = "shopfloor/v1"
	// DefaultQueueMaxBytes is far more than years of hourly contributions.
	DefaultQueueMaxBytes = config.ByteSize(16 << 20)
	// DefaultConnectTimeout covers a TLS handshake over a slow uplink.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultKeepAlive notices a dead connection within a minute.
	DefaultKeepAlive = 30 * time.Second
)

// classPattern is what a machine class may look like: it is a topic level
// and an InfluxDB tag value, and must never be able to carry a name with
// spaces or punctuation a firm would use for itself.
var classPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// ValidClass reports whether s may be used as a machine class.
func ValidClass(s string) bool { return classPattern.MatchString(s) }

// Config is the agent's share section: what to share with the cluster,
// how often and where to.
type Config struct {
	// Enabled turns sharing on. Off by default: a firm decides to join.
	Enabled bool `yaml:"enabled"`
	// Period is the KPI window shared; only "1h" exists today.
	Period string `yaml:"period"`
	// Settle is how long after the end of a period, and after every
	// machine's KPIs for it are final, the contribution waits before it is
	// sent.
	Settle time.Duration `yaml:"settle"`
	// MaxWait is how long past end+settle a class waits for a machine
	// whose hour never becomes final (its data stopped and the agent was
	// stopped too) before the contribution is sent with the values there
	// are; a machine that catches up later updates it.
	MaxWait time.Duration `yaml:"max_wait"`
	// Classes maps a machine name (the asset's machine) to the class the
	// firm assigns it (cnc-5axis, cnc-lathe, robot-welding). Machines
	// without a class are never shared.
	Classes map[string]string `yaml:"classes"`
	// Broker is the cluster's MQTT broker.
	Broker BrokerConfig `yaml:"broker"`
	// TopicPrefix is the root of the cluster's topics; contributions go to
	// <prefix>/contrib/<pseudonym>/<class>.
	TopicPrefix string `yaml:"topic_prefix"`
	// QueueMaxBytes bounds the store-and-forward queue of contributions
	// that could not be sent yet.
	QueueMaxBytes config.ByteSize `yaml:"queue_max_bytes"`
}

// BrokerConfig is a connection to the cluster's MQTT broker. The hub uses
// it too.
type BrokerConfig struct {
	// URL is tcp://, ssl://, tls:// or mqtts:// with host:port. Use TLS
	// whenever the broker is outside the firm.
	URL string `yaml:"url"`
	// ClientID names the MQTT session. Empty means one derived from the
	// pseudonym (agent) or "shopfloor-hub" (hub); it must not carry the
	// firm's name.
	ClientID string        `yaml:"client_id"`
	Username string        `yaml:"username"`
	Password config.Secret `yaml:"password"`
	TLS      TLSConfig     `yaml:"tls"`
	// ConnectTimeout bounds connect and each publish or subscribe wait.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	KeepAlive      time.Duration `yaml:"keep_alive"`
}

// TLSConfig locates the certificates for a TLS connection.
type TLSConfig struct {
	// CAFile is a PEM bundle of the CAs that may sign the broker's
	// certificate; empty means the system pool.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate and its key, for
	// brokers that require one.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked against the broker's
	// certificate.
	ServerName string `yaml:"server_name"`
}

// SetDefaults fills unset values.
func (c *Config) SetDefaults() {
	if c.Period == "" {
		c.Period = DefaultPeriod
	}
	if c.Settle == 0 {
		c.Settle = DefaultSettle
	}
	if c.MaxWait == 0 {
		c.MaxWait = DefaultMaxWait
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = DefaultTopicPrefix
	}
	if c.QueueMaxBytes == 0 {
		c.QueueMaxBytes = DefaultQueueMaxBytes
	}
	c.Broker.SetDefaults()
}

// SetDefaults fills unset values.
func (b *BrokerConfig) SetDefaults() {
	if b.ConnectTimeout == 0 {
		b.ConnectTimeout = DefaultConnectTimeout
	}
	if b.KeepAlive == 0 {
		b.KeepAlive = DefaultKeepAlive
	}
}

// Validate reports every problem, with keys relative to the share section.
// A disabled section is not checked, so an example can stay in the file.
func (c Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	if c.Period != "1h" {
		errs = append(errs, config.Invalid("period", "%q is not supported; use 1h (the hub compares hours)", c.Period))
	}
	if c.Settle < 0 {
		errs = append(errs, config.Invalid("settle", "must not be negative"))
	}
	if c.MaxWait < 0 {
		errs = append(errs, config.Invalid("max_wait", "must not be negative"))
	}
	if len(c.Classes) == 0 {
		errs = append(errs, config.Invalid("classes", "is empty, so nothing would be shared; map machine names to classes such as cnc-5axis"))
	}
	for m, cl := range c.Classes {
		if !ValidClass(cl) {
			errs = append(errs, config.Invalid("classes."+m, "%q is not a class name: use lower-case letters, digits, '-' and '_' (cnc-5axis), never a name that identifies the firm", cl))
		}
	}
	if err := validTopicPrefix(c.TopicPrefix); err != nil {
		errs = append(errs, config.Invalid("topic_prefix", "%v", err))
	}
	if c.QueueMaxBytes < 0 {
		errs = append(errs, config.Invalid("queue_max_bytes", "must not be negative"))
	}
	errs = append(errs, config.Nest("broker", c.Broker.Validate()))
	return errors.Join(errs...)
}

func validTopicPrefix(p string) error {
	if p == "" || strings.ContainsAny(p, "+#\x00") || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") || strings.HasPrefix(p, "$") {
		return fmt.Errorf("%q must be a plain topic such as shopfloor/v1, without wildcards or a leading or trailing /", p)
	}
	return nil
}

// Validate reports every problem of the broker connection.
func (b BrokerConfig) Validate() error {
	var errs []error
	if b.URL == "" {
		errs = append(errs, config.Missing("url"))
	} else if u, err := url.Parse(b.URL); err != nil || u.Host == "" {
		errs = append(errs, config.Invalid("url", "%q is not a broker address such as ssl://cluster.example:8883", b.URL))
	} else {
		switch u.Scheme {
		case "tcp", "mqtt", "ssl", "tls", "mqtts":
		default:
			errs = append(errs, config.Invalid("url", "scheme %q is not supported; use ssl:// (or tcp:// inside a test)", u.Scheme))
		}
	}
	if b.TLS.CertFile != "" && b.TLS.KeyFile == "" {
		errs = append(errs, config.Invalid("tls.key_file", "is required with cert_file"))
	}
	if b.TLS.KeyFile != "" && b.TLS.CertFile == "" {
		errs = append(errs, config.Invalid("tls.cert_file", "is required with key_file"))
	}
	if b.ConnectTimeout < 0 {
		errs = append(errs, config.Invalid("connect_timeout", "must not be negative"))
	}
	if b.KeepAlive < 0 {
		errs = append(errs, config.Invalid("keep_alive", "must not be negative"))
	}
	return errors.Join(errs...)
}

// UsesTLS reports whether the URL's scheme means TLS.
func (b BrokerConfig) UsesTLS() bool {
	u, err := url.Parse(b.URL)
	if err != nil {
		return false
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts":
		return true
	}
	return false
}

// TLSClientConfig reads the certificate files; nil for a plain-text URL.
// Files are read on every call, so a renewed certificate is used at the
// next connect.
func (b BrokerConfig) TLSClientConfig() (*tls.Config, error) {
	if !b.UsesTLS() {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: b.TLS.ServerName}
	if b.TLS.CAFile != "" {
		pem, err := os.ReadFile(b.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file: %s holds no PEM certificate", b.TLS.CAFile)
		}
		t.RootCAs = pool
	}
	if b.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(b.TLS.CertFile, b.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file/tls.key_file: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}
