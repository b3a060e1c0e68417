package influxdb

import (
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

// Config is the sink's section of the agent configuration. One shape
// serves every InfluxDB generation because all of them accept the v2 write
// API: for 1.8 the bucket is "db/rp" (or "db" for the default retention
// policy) and token and org may stay empty.
type Config struct {
	// URL is the server's base address, e.g. https://influx.example:8086.
	// A path prefix (a reverse proxy's /influx/) is kept.
	URL string `yaml:"url"`
	// Token authenticates writes. InfluxDB 1.8 without auth needs none;
	// with auth it takes "user:password".
	Token config.Secret `yaml:"token"`
	// Org is the 2.x/Cloud organisation. 1.8 ignores it.
	Org string `yaml:"org"`
	// Bucket is the 2.x/3.x bucket, or "db/rp" or "db" on 1.8.
	Bucket string `yaml:"bucket"`
	// Measurement receives the machine samples; the dashboards expect the
	// default "machine".
	Measurement string `yaml:"measurement"`
	// KPIMeasurement receives the KPI engine's rows, tagged with their
	// window; the dashboards expect the default "kpi".
	KPIMeasurement string `yaml:"kpi_measurement"`
	// Timeout bounds one HTTP request, connection and response included.
	Timeout time.Duration `yaml:"timeout"`
	// Gzip compresses request bodies. Unset means on, except for an
	// InfluxDB on the same host (a loopback address or localhost): line
	// protocol shrinks about tenfold, which matters on a shop floor uplink,
	// but compressing for the loopback interface only burns CPU. It is a
	// pointer because YAML cannot tell "gzip: false" from a missing key for
	// a plain bool. Use UseGzip to read it.
	Gzip *bool `yaml:"gzip"`
	// BatchSize is the most points (lines) per HTTP request. The agent
	// sizes the pipeline's batches from it too, at six samples a point,
	// so one pipeline batch is usually one request.
	BatchSize int `yaml:"batch_size"`
	// FlushInterval is how long the pipeline lets a partial batch wait.
	// The sink itself does not read it.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// MaxInFlight is how many batches the pipeline writes at once, each
	// on its own connection: with two, InfluxDB stores one while the
	// agent reads and encodes the next, which halves the delay of a
	// backlog on a busy box. 1 writes strictly one after the other.
	MaxInFlight int `yaml:"max_in_flight"`
	// TLS tunes https connections.
	TLS TLSConfig `yaml:"tls"`
}

// TLSConfig tunes the https connection to InfluxDB.
type TLSConfig struct {
	// CAFile is a PEM bundle trusted in addition to the system roots, for
	// a server with a certificate from the firm's own CA.
	CAFile string `yaml:"ca_file"`
	// InsecureSkipVerify turns off certificate checks. It exists for a
	// first test against a self-signed server, never for production.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Defaults. 5000 points per request is where InfluxDB's cost per point
// levels off (its own documentation's recommendation); ten seconds lets a
// busy server answer a full batch while a dead one is noticed quickly.
const (
	DefaultMeasurement    = "machine"
	DefaultKPIMeasurement = "kpi"
	DefaultTimeout        = 10 * time.Second
	DefaultBatchSize      = 5000
	DefaultFlushInterval  = time.Second
	DefaultMaxInFlight    = 2
	// maxInFlight bounds max_in_flight: every batch in flight holds its
	// samples in memory (some 7 MB at the default batch size).
	maxInFlight = 16
)

// SetDefaults fills unset values. The config loader calls it after
// decoding, which is why Gzip is a pointer.
func (c *Config) SetDefaults() {
	if c.Measurement == "" {
		c.Measurement = DefaultMeasurement
	}
	if c.KPIMeasurement == "" {
		c.KPIMeasurement = DefaultKPIMeasurement
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Gzip == nil {
		on := !loopback(c.URL)
		c.Gzip = &on
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
}

// UseGzip reports whether request bodies are compressed; unset means yes
// unless the server is on this host, so a Config built in code without
// SetDefaults behaves the same.
func (c *Config) UseGzip() bool {
	if c.Gzip == nil {
		return !loopback(c.URL)
	}
	return *c.Gzip
}

// loopback reports whether rawURL names this host.
func loopback(rawURL string) bool {
	u, err := url.Parse(rawURL)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Validate reports every problem at once, with keys relative to this
// section so the loader can point at lines.
func (c Config) Validate() error {
	var errs []error
	switch {
	case c.URL == "":
		errs = append(errs, config.Missing("url"))
	default:
		u, err := url.Parse(c.URL)
		switch {
		case err != nil:
			errs = append(errs, config.Invalid("url", "is not a URL: %v", err))
		case u.Scheme != "http" && u.Scheme != "https":
			errs = append(errs, config.Invalid("url", "must start with http:// or https://, e.g. http://localhost:8086"))
		case u.Host == "":
			errs = append(errs, config.Invalid("url", "has no host; write e.g. http://localhost:8086"))
		case u.RawQuery != "" || u.Fragment != "":
			errs = append(errs, config.Invalid("url", "must not have a query or fragment; org and bucket have their own keys"))
		}
	}
	switch {
	case strings.TrimSpace(c.Bucket) == "":
		errs = append(errs, config.Missing("bucket"))
	case strings.Count(c.Bucket, "/") > 1:
		errs = append(errs, config.Invalid("bucket", "%q has more than one /; InfluxDB 1.8 takes \"db/rp\" or \"db\"", c.Bucket))
	}
	if c.KPIMeasurement != "" && (!validName(c.KPIMeasurement) || strings.HasPrefix(c.KPIMeasurement, "#")) {
		errs = append(errs, config.Invalid("kpi_measurement", "%q is not a valid InfluxDB measurement name", c.KPIMeasurement))
	}
	if c.Measurement == "" {
		errs = append(errs, config.Missing("measurement"))
	} else if !validName(c.Measurement) || strings.HasPrefix(c.Measurement, "#") {
		errs = append(errs, config.Invalid("measurement", "%q is not a valid InfluxDB measurement name (no control characters, no trailing backslash, no leading #)", c.Measurement))
	}
	if c.Timeout <= 0 {
		errs = append(errs, config.Invalid("timeout", "must be positive, e.g. 10s"))
	}
	if c.BatchSize < 1 {
		errs = append(errs, config.Invalid("batch_size", "must be at least 1; 5000 suits most servers"))
	}
	if c.FlushInterval <= 0 {
		errs = append(errs, config.Invalid("flush_interval", "must be positive, e.g. 1s"))
	}
	if c.MaxInFlight < 1 || c.MaxInFlight > maxInFlight {
		errs = append(errs, config.Invalid("max_in_flight", "must be 1 to %d, got %d; 2 suits most servers", maxInFlight, c.MaxInFlight))
	}
	if c.TLS.CAFile != "" {
		if _, err := loadCA(c.TLS.CAFile); err != nil {
			errs = append(errs, config.Invalid("tls.ca_file", "%v", err))
		}
	}
	return errors.Join(errs...)
}

// loadCA reads a PEM bundle into the system pool, so that trusting the
// firm's CA does not stop a public Cloud URL from working.
func loadCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New(path + " holds no PEM certificate")
	}
	return pool, nil
}
