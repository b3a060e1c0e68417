package opcua

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

// Defaults applied by SetDefaults.
const (
	// DefaultConnectTimeout covers a dial, a secure channel handshake with
	// RSA over a slow shop-floor link, and session activation.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultRequestTimeout bounds one service call; browsing a large
	// address space is many calls, each short.
	DefaultRequestTimeout = 10 * time.Second
	// DefaultSessionTimeout is short so that a session the agent lost
	// (a pulled cable) is cleaned up by the server within minutes rather
	// than the hour many servers default to, keeping PLCs free of orphans.
	DefaultSessionTimeout = 2 * time.Minute
	// DefaultPublishingInterval is how often the server sends collected
	// notifications; a second is below any dashboard's refresh.
	DefaultPublishingInterval = time.Second
	// DefaultSamplingInterval is how often the server samples a node;
	// half the publishing interval catches a change within one publish.
	DefaultSamplingInterval = 500 * time.Millisecond
	// DefaultQueueSize of 1 keeps only the newest value per publish,
	// which is right for states and gauges; raise it for counters whose
	// every step matters.
	DefaultQueueSize = 1
	// DefaultPollInterval is the Read period in polling mode.
	DefaultPollInterval = time.Second
	// DefaultWatchdogInterval is how often the server's clock is read to
	// notice a connection that died silently; with the request timeout
	// it bounds how long an outage goes unnoticed.
	DefaultWatchdogInterval = 5 * time.Second
	// DefaultBadNodeRetry is slow on purpose: a node that does not exist
	// today rarely appears within minutes, and asking a PLC again every
	// second for it costs its CPU.
	DefaultBadNodeRetry = 5 * time.Minute
	// DefaultMaxItemsPerCall is used when the server does not publish
	// its MaxMonitoredItemsPerCall / MaxNodesPerRead limits; 1000 is
	// below every limit seen on PLC servers.
	DefaultMaxItemsPerCall = 1000
	// DefaultBackfillMax bounds how far back a back-fill reads: an hour
	// covers a switch reboot or a cable swapped during a shift, and the
	// history it reads (36,000 values for a node changing every 100 ms)
	// stays small next to the queue.
	DefaultBackfillMax = time.Hour
	// DefaultStartNode is the Root folder, so browse paths read like the
	// tree every OPC UA client shows ("Objects/Machines/...").
	DefaultStartNode = "i=84"
)

// Modes of reading.
const (
	ModeSubscribe = "subscribe"
	ModePoll      = "poll"
)

// Security policies by their short names.
const (
	PolicyNone                = "None"
	PolicyBasic256Sha256      = "Basic256Sha256"
	PolicyAes128Sha256RsaOaep = "Aes128_Sha256_RsaOaep"
	PolicyAes256Sha256RsaPss  = "Aes256_Sha256_RsaPss"
	PolicyBasic128Rsa15       = "Basic128Rsa15" // deprecated
	PolicyBasic256            = "Basic256"      // deprecated
)

// Security modes.
const (
	SecurityModeNone           = "None"
	SecurityModeSign           = "Sign"
	SecurityModeSignAndEncrypt = "SignAndEncrypt"
)

// Login methods.
const (
	AuthAnonymous   = "anonymous"
	AuthUsername    = "username"
	AuthCertificate = "certificate"
)

// Deadband types.
const (
	DeadbandAbsolute = "absolute"
	DeadbandPercent  = "percent"
)

// Config is one OPC UA source. The zero value of a field means its
// default (see SetDefaults).
type Config struct {
	// Endpoint is the server's URL, opc.tcp://host:port[/path].
	Endpoint string `yaml:"endpoint"`
	// SecurityPolicy is None, Basic256Sha256, Aes128_Sha256_RsaOaep or
	// Aes256_Sha256_RsaPss; Basic128Rsa15 and Basic256 need
	// AllowDeprecated. Empty means None.
	SecurityPolicy string `yaml:"security_policy"`
	// SecurityMode is Sign or SignAndEncrypt (None with policy None).
	// Empty means SignAndEncrypt for a secure policy.
	SecurityMode string `yaml:"security_mode"`
	// AllowDeprecated permits Basic128Rsa15 and Basic256, broken
	// policies that old PLCs still offer.
	AllowDeprecated bool `yaml:"allow_deprecated"`
	// Auth is how the session logs in.
	Auth Auth `yaml:"auth"`
	// ApplicationURI names the agent; it is written into the generated
	// application certificate. Empty means urn:shopfloor:<hostname>.
	ApplicationURI string `yaml:"application_uri"`
	// TrustOnFirstUse trusts a server certificate the first time a server
	// with that application URI is seen. Off by default: an operator
	// trusts a server by moving its certificate from rejected/ to
	// trusted/.
	TrustOnFirstUse bool `yaml:"trust_on_first_use"`
	// ConnectTimeout bounds dial, handshake and session creation.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// RequestTimeout bounds each service call.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// SessionTimeout is how long the server keeps a session whose client
	// went silent.
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// Mode is subscribe (default) or poll, for servers without
	// subscriptions.
	Mode string `yaml:"mode"`
	// PublishingInterval is the subscription's publishing interval.
	PublishingInterval time.Duration `yaml:"publishing_interval"`
	// PollInterval is the Read period in poll mode.
	PollInterval time.Duration `yaml:"poll_interval"`
	// SamplingInterval and QueueSize are the defaults of every node.
	SamplingInterval time.Duration `yaml:"sampling_interval"`
	QueueSize        uint32        `yaml:"queue_size"`
	// MaxItemsPerCall caps monitored items per CreateMonitoredItems and
	// nodes per Read, below the server's own limits. 0 means the server's
	// limits, or DefaultMaxItemsPerCall when it publishes none.
	MaxItemsPerCall int `yaml:"max_items_per_call"`
	// WatchdogInterval is how often the server's clock is read to notice
	// a connection that died without closing.
	WatchdogInterval time.Duration `yaml:"watchdog_interval"`
	// BadNodeRetry is how often nodes that failed (unknown, access
	// denied) are tried again.
	BadNodeRetry time.Duration `yaml:"bad_node_retry"`
	// Backfill reads, after a reconnect, the values each historizing
	// node recorded while the connection was down (HistoryRead), so the
	// series has no gap. Nil means true: a pointer, because false must
	// be writable in YAML while the default is on.
	Backfill *bool `yaml:"backfill"`
	// BackfillMax caps how far back a back-fill reads, so an outage of
	// days does not turn into one huge read when the link returns.
	BackfillMax time.Duration `yaml:"backfill_max"`
	// Nodes are what to read: explicit node ids and browse-path
	// patterns. At least one.
	Nodes []Node `yaml:"nodes"`
}

// Auth is the session's login.
type Auth struct {
	// Method is anonymous, username or certificate. Empty means username
	// when Username is set, else anonymous.
	Method   string        `yaml:"method"`
	Username string        `yaml:"username"`
	Password config.Secret `yaml:"password"`
	// CertFile and KeyFile are the user certificate (PEM or DER) and its
	// PEM key for certificate login. Empty means the application
	// certificate.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Node is one explicit node id or one browse-path pattern, with how to
// read it.
type Node struct {
	// NodeID is an explicit node in the usual string form:
	// ns=2;s=Machine1.Speed, ns=3;i=1001, i=2258, nsu=urn:x;s=Speed.
	NodeID string `yaml:"node_id"`
	// Path is a browse-path pattern relative to StartNode, segments
	// separated by "/": a segment is a browse name (optionally
	// "<ns>:Name"), a glob (*, ?, [a-z]) matching one level, or ** for
	// any number of levels. Resolved at connect time and again after
	// every reconnect.
	Path string `yaml:"path"`
	// StartNode is where Path starts; empty means the Root folder (i=84).
	StartNode string `yaml:"start_node"`
	// Origin overrides the batch origin of an explicit node (for a path
	// it is the browse path of the folder holding the variable).
	Origin string `yaml:"origin"`
	// Signal overrides the signal name (the browse name by default),
	// before the source's mapping rules; arrays append _1, _2, ...
	Signal string `yaml:"signal"`
	// SamplingInterval and QueueSize override the source's defaults.
	SamplingInterval time.Duration `yaml:"sampling_interval"`
	QueueSize        uint32        `yaml:"queue_size"`
	// Deadband asks the server to report only changes larger than this
	// (numeric nodes only). A server that refuses it gets the item
	// without a filter, and the source logs that.
	Deadband *Deadband `yaml:"deadband"`
}

// Deadband is an OPC UA data change filter.
type Deadband struct {
	// Type is absolute or percent (of the node's EURange).
	Type  string  `yaml:"type"`
	Value float64 `yaml:"value"`
}

// SetDefaults fills unset values. It is idempotent.
func (c *Config) SetDefaults() {
	if c.SecurityPolicy == "" {
		c.SecurityPolicy = PolicyNone
	}
	if c.SecurityMode == "" {
		if c.SecurityPolicy == PolicyNone {
			c.SecurityMode = SecurityModeNone
		} else {
			c.SecurityMode = SecurityModeSignAndEncrypt
		}
	}
	if c.Auth.Method == "" {
		if c.Auth.Username != "" {
			c.Auth.Method = AuthUsername
		} else {
			c.Auth.Method = AuthAnonymous
		}
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = DefaultSessionTimeout
	}
	if c.Mode == "" {
		c.Mode = ModeSubscribe
	}
	if c.PublishingInterval == 0 {
		c.PublishingInterval = DefaultPublishingInterval
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.SamplingInterval == 0 {
		c.SamplingInterval = DefaultSamplingInterval
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.WatchdogInterval == 0 {
		c.WatchdogInterval = DefaultWatchdogInterval
	}
	if c.BadNodeRetry == 0 {
		c.BadNodeRetry = DefaultBadNodeRetry
	}
	if c.Backfill == nil {
		on := true
		c.Backfill = &on
	}
	if c.BackfillMax == 0 {
		c.BackfillMax = DefaultBackfillMax
	}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.Path != "" && n.StartNode == "" {
			n.StartNode = DefaultStartNode
		}
		if n.SamplingInterval == 0 {
			n.SamplingInterval = c.SamplingInterval
		}
		if n.QueueSize == 0 {
			n.QueueSize = c.QueueSize
		}
	}
}

// BackfillEnabled reports whether gaps are back-filled with HistoryRead:
// the default, unless backfill: false.
func (c Config) BackfillEnabled() bool { return c.Backfill == nil || *c.Backfill }

// policyURI maps a short policy name to its URI; ok is false for an
// unknown name.
func policyURI(name string) (uri string, deprecated, ok bool) {
	switch name {
	case PolicyNone, PolicyBasic256Sha256, PolicyAes128Sha256RsaOaep, PolicyAes256Sha256RsaPss:
		return ua.SecurityPolicyURIPrefix + name, false, true
	case PolicyBasic128Rsa15, PolicyBasic256:
		return ua.SecurityPolicyURIPrefix + name, true, true
	}
	return "", false, false
}

func securityMode(name string) (ua.MessageSecurityMode, bool) {
	switch name {
	case SecurityModeNone:
		return ua.MessageSecurityModeNone, true
	case SecurityModeSign:
		return ua.MessageSecurityModeSign, true
	case SecurityModeSignAndEncrypt:
		return ua.MessageSecurityModeSignAndEncrypt, true
	}
	return ua.MessageSecurityModeInvalid, false
}

// Validate reports every problem at once, with keys relative to the
// opcua section (endpoint, nodes[2].path).
func (c Config) Validate() error {
	var errs []error
	errs = append(errs, validEndpoint(c.Endpoint))
	_, deprecated, ok := policyURI(c.SecurityPolicy)
	switch {
	case c.SecurityPolicy == "":
	case !ok:
		errs = append(errs, config.Invalid("security_policy", "%q is not a security policy; use None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss", c.SecurityPolicy))
	case deprecated && !c.AllowDeprecated:
		errs = append(errs, config.Invalid("security_policy", "%s is deprecated and broken; use Basic256Sha256 or an Aes policy, or set allow_deprecated: true for an old PLC that offers nothing better", c.SecurityPolicy))
	}
	if c.SecurityMode != "" {
		m, ok := securityMode(c.SecurityMode)
		switch {
		case !ok:
			errs = append(errs, config.Invalid("security_mode", "%q is not a security mode; use Sign or SignAndEncrypt (or None with security_policy None)", c.SecurityMode))
		case c.SecurityPolicy == PolicyNone && m != ua.MessageSecurityModeNone:
			errs = append(errs, config.Invalid("security_mode", "%s needs a security policy; set security_policy to Basic256Sha256 or an Aes policy", c.SecurityMode))
		case c.SecurityPolicy != "" && c.SecurityPolicy != PolicyNone && m == ua.MessageSecurityModeNone:
			errs = append(errs, config.Invalid("security_mode", "None contradicts security_policy %s; use Sign or SignAndEncrypt", c.SecurityPolicy))
		}
	}
	errs = append(errs, config.Nest("auth", c.Auth.validate()))
	if c.ApplicationURI != "" {
		if _, err := url.Parse(c.ApplicationURI); err != nil || !strings.Contains(c.ApplicationURI, ":") {
			errs = append(errs, config.Invalid("application_uri", "%q is not a URI; use something like urn:shopfloor:edge-01", c.ApplicationURI))
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
		min time.Duration
	}{
		{"connect_timeout", c.ConnectTimeout, time.Millisecond},
		{"request_timeout", c.RequestTimeout, time.Millisecond},
		{"session_timeout", c.SessionTimeout, time.Second},
		{"publishing_interval", c.PublishingInterval, time.Millisecond},
		{"poll_interval", c.PollInterval, time.Millisecond},
		{"sampling_interval", c.SamplingInterval, 0},
		{"bad_node_retry", c.BadNodeRetry, time.Second},
		{"watchdog_interval", c.WatchdogInterval, 100 * time.Millisecond},
		{"backfill_max", c.BackfillMax, time.Second},
	} {
		if d.v < d.min || (d.v == 0 && d.min > 0) {
			errs = append(errs, config.Invalid(d.key, "must be at least %s, got %s", max(d.min, time.Millisecond), d.v))
		}
	}
	switch c.Mode {
	case "", ModeSubscribe, ModePoll:
	default:
		errs = append(errs, config.Invalid("mode", "%q is not a mode; use subscribe, or poll for a server without subscriptions", c.Mode))
	}
	if c.MaxItemsPerCall < 0 {
		errs = append(errs, config.Invalid("max_items_per_call", "must not be negative (0 means the server's limit), got %d", c.MaxItemsPerCall))
	}
	if len(c.Nodes) == 0 {
		errs = append(errs, config.Invalid("nodes", "needs at least one node_id or path; run `shopfloor browse --endpoint %s` to see what the server offers", orDefault(c.Endpoint, "opc.tcp://host:4840")))
	}
	for i, n := range c.Nodes {
		errs = append(errs, config.Nest(config.Index("nodes", i), n.validate()))
	}
	return errors.Join(errs...)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func validEndpoint(e string) error {
	if e == "" {
		return config.Missing("endpoint")
	}
	u, err := url.Parse(e)
	switch {
	case err != nil:
		return config.Invalid("endpoint", "is not a URL: %v", err)
	case u.Scheme != "opc.tcp":
		return config.Invalid("endpoint", "scheme %q is not supported; use opc.tcp://host:4840", u.Scheme)
	case u.Host == "":
		return config.Invalid("endpoint", "has no host; write opc.tcp://host:port, as in opc.tcp://plc-01:4840")
	}
	return nil
}

func (a Auth) validate() error {
	var errs []error
	switch a.Method {
	case "", AuthAnonymous:
		if a.Password != "" && a.Username == "" {
			errs = append(errs, config.Invalid("password", "is set without a username"))
		}
	case AuthUsername:
		if a.Username == "" {
			errs = append(errs, config.Missing("username"))
		}
	case AuthCertificate:
	default:
		errs = append(errs, config.Invalid("method", "%q is not a login method; use anonymous, username or certificate", a.Method))
	}
	if (a.CertFile == "") != (a.KeyFile == "") {
		errs = append(errs, config.Invalid("cert_file", "cert_file and key_file go together: a user certificate needs its private key"))
	}
	if a.CertFile != "" && a.Method != AuthCertificate && a.Method != "" {
		errs = append(errs, config.Invalid("cert_file", "is only used with method: certificate"))
	}
	return errors.Join(errs...)
}

func (n Node) validate() error {
	var errs []error
	switch {
	case n.NodeID == "" && n.Path == "":
		errs = append(errs, config.Invalid("node_id", "set node_id (ns=2;s=Speed) or path (Objects/Machines/*/SpindleSpeed)"))
	case n.NodeID != "" && n.Path != "":
		errs = append(errs, config.Invalid("path", "set node_id or path, not both"))
	case n.NodeID != "":
		if err := validNodeID(n.NodeID); err != nil {
			errs = append(errs, config.Invalid("node_id", "%v", err))
		}
	default:
		if _, err := ParsePath(n.Path); err != nil {
			errs = append(errs, config.Invalid("path", "%v", err))
		}
		if n.Origin != "" {
			errs = append(errs, config.Invalid("origin", "is only for node_id entries; a path's origin is the browse path of its folder"))
		}
	}
	if n.StartNode != "" {
		if err := validNodeID(n.StartNode); err != nil || strings.HasPrefix(n.StartNode, "nsu=") {
			errs = append(errs, config.Invalid("start_node", "%q is not a node id; write it as i=85 or ns=2;s=Plant", n.StartNode))
		}
	}
	if n.Signal != "" && collector.SanitizeName(n.Signal) != n.Signal {
		errs = append(errs, config.Invalid("signal", "%q is not a valid signal name; use lower case letters, digits and underscores, e.g. %q", n.Signal, collector.SanitizeName(n.Signal)))
	}
	if n.SamplingInterval < 0 {
		errs = append(errs, config.Invalid("sampling_interval", "must not be negative"))
	}
	if d := n.Deadband; d != nil {
		switch d.Type {
		case DeadbandAbsolute:
		case DeadbandPercent:
			if d.Value > 100 {
				errs = append(errs, config.Invalid("deadband.value", "a percent deadband must be between 0 and 100, got %v", d.Value))
			}
		case "":
			errs = append(errs, config.Missing("deadband.type"))
		default:
			errs = append(errs, config.Invalid("deadband.type", "%q is not a deadband type; use absolute or percent", d.Type))
		}
		if d.Value < 0 {
			errs = append(errs, config.Invalid("deadband.value", "must not be negative"))
		}
	}
	return errors.Join(errs...)
}

// validNodeID accepts the string forms of Part 6, 5.3.1.10: i=, s=, g=,
// b= with an optional ns=<index>; or nsu=<uri>; prefix.
func validNodeID(s string) error {
	rest := s
	if after, ok := strings.CutPrefix(s, "nsu="); ok {
		_, idPart, ok := strings.Cut(after, ";")
		if !ok {
			return fmt.Errorf("%q is not a node id: nsu=<uri> must be followed by ;i=, ;s=, ;g= or ;b=", s)
		}
		rest = idPart
	} else if after, ok := strings.CutPrefix(s, "ns="); ok {
		_, idPart, _ := strings.Cut(after, ";")
		rest = idPart
	}
	if len(rest) < 2 || rest[1] != '=' || !strings.ContainsRune("isgb", rune(rest[0])) {
		return fmt.Errorf("%q is not a node id; write it as ns=2;s=Name, ns=2;i=1001 or i=2258", s)
	}
	if rest == s || strings.HasPrefix(s, "ns=") {
		if _, err := ua.ParseNodeID(s); err != nil {
			return fmt.Errorf("%q is not a node id: %w", s, err)
		}
	}
	return nil
}
