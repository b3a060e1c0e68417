package main

import (
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/noordoostpolder/shopfloor/adapters/opcua"
	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/kpi"
)

//go:embed web/index.html
var statusPage []byte

// Status is the /api/status document: everything the status page shows.
// The JSON field names are the API; README.md documents them.
type Status struct {
	Time     time.Time       `json:"time"`
	Agent    AgentInfo       `json:"agent"`
	Sources  []SourceStatus  `json:"sources"`
	Sink     SinkStatus      `json:"sink"`
	Machines []MachineStatus `json:"machines"`
}

// AgentInfo says which agent this is.
type AgentInfo struct {
	Version    string    `json:"version"`
	Started    time.Time `json:"started"`
	KPIEnabled bool      `json:"kpi_enabled"`
}

// SourceStatus is one source's connection and input.
type SourceStatus struct {
	Name        string                  `json:"name"`
	Kind        string                  `json:"kind"`
	Endpoint    string                  `json:"endpoint"`
	Security    string                  `json:"security"`
	Up          bool                    `json:"up"`
	Since       time.Time               `json:"since"`
	LastError   string                  `json:"last_error,omitempty"`
	LastErrorAt time.Time               `json:"last_error_at,omitzero"`
	Messages    int64                   `json:"messages"`
	BadInputs   map[string]int64        `json:"bad_inputs"`
	Origins     []collector.OriginCount `json:"origins"`
	// BadNodes are OPC UA nodes that yield nothing, and why.
	BadNodes []opcua.BadNode `json:"bad_nodes,omitempty"`
}

// SinkStatus is the sink and the store-and-forward queue in front of it.
type SinkStatus struct {
	Name                string    `json:"name"`
	Endpoint            string    `json:"endpoint"`
	Up                  bool      `json:"up"`
	Since               time.Time `json:"since"`
	LastError           string    `json:"last_error,omitempty"`
	LastErrorAt         time.Time `json:"last_error_at,omitzero"`
	QueuedSamples       int64     `json:"queued_samples"`
	QueuedRecords       int64     `json:"queued_records"`
	QueueBytes          int64     `json:"queue_bytes"`
	OldestQueuedSeconds float64   `json:"oldest_queued_seconds"`
	DroppedSamples      int64     `json:"dropped_samples"`
}

// MachineStatus is one machine as the agent last saw it.
type MachineStatus struct {
	Site        string          `json:"site,omitempty"`
	Area        string          `json:"area,omitempty"`
	Line        string          `json:"line,omitempty"`
	Machine     string          `json:"machine"`
	MachineType string          `json:"machine_type,omitempty"`
	Source      string          `json:"source"`
	State       string          `json:"state,omitempty"`
	StateSince  time.Time       `json:"state_since,omitzero"`
	LastSeen    time.Time       `json:"last_seen"`
	Values      []SignalValue   `json:"values"`
	Shift       *ShiftKPIs      `json:"shift,omitempty"`
	Timeline    []TimelineEntry `json:"timeline"`
}

// SignalValue is the last value of a signal and how old it is.
type SignalValue struct {
	Signal     string  `json:"signal"`
	Value      string  `json:"value"`
	Unit       string  `json:"unit,omitempty"`
	Quality    string  `json:"quality"`
	AgeSeconds float64 `json:"age_seconds"`
}

// ShiftKPIs are the machine's KPIs of its current shift so far.
type ShiftKPIs struct {
	Name         string    `json:"name"`
	Start        time.Time `json:"start"`
	OEE          *float64  `json:"oee,omitempty"`
	Availability *float64  `json:"availability,omitempty"`
	Performance  *float64  `json:"performance,omitempty"`
	Quality      *float64  `json:"quality,omitempty"`
	Good         int64     `json:"good"`
	Reject       int64     `json:"reject"`
}

// TimelineEntry is a stretch of one state.
type TimelineEntry struct {
	State string    `json:"state"`
	From  time.Time `json:"from"`
	To    time.Time `json:"to"`
}

// timelineSpan is how far back the page's state timeline reaches when no
// shift is known.
const timelineSpan = 8 * time.Hour

func (a *Agent) status() Status {
	now := time.Now()
	st := Status{Time: now, Agent: AgentInfo{Version: version, Started: a.started, KPIEnabled: a.kpi != nil}}
	bad, msgs := a.sourceCounters()
	origins := a.pipeline.Origins()
	comps := a.pipeline.Status()
	for i, sc := range a.cfg.Sources {
		ss := SourceStatus{Name: sc.Name, BadInputs: bad[sc.Name], Messages: msgs[sc.Name], Origins: origins[sc.Name]}
		if ss.BadInputs == nil {
			ss.BadInputs = map[string]int64{}
		}
		if len(ss.Origins) > 100 {
			ss.Origins = ss.Origins[:100]
		}
		ss.Kind, ss.Endpoint, ss.Security = describeSource(sc)
		ss.BadNodes = a.badNodes(sc.Name)
		if i < len(comps) {
			c := comps[i]
			ss.Up, ss.Since, ss.LastError, ss.LastErrorAt = c.Up, c.Since, c.LastError, c.LastErrorAt
		}
		st.Sources = append(st.Sources, ss)
	}
	q := a.pipeline.Queue()
	sink := comps[len(comps)-1]
	st.Sink = SinkStatus{Name: sink.Name, Endpoint: redactURL(a.cfg.Sink.InfluxDB.URL) + " bucket " + a.cfg.Sink.InfluxDB.Bucket,
		Up: sink.Up, Since: sink.Since, LastError: sink.LastError, LastErrorAt: sink.LastErrorAt,
		QueuedSamples: q.Weight, QueuedRecords: q.Records, QueueBytes: q.Bytes, DroppedSamples: q.DroppedWeight}
	if !q.Oldest.IsZero() {
		st.Sink.OldestQueuedSeconds = max(now.Sub(q.Oldest).Seconds(), 0)
	}

	shifts := map[collector.Asset]kpi.Current{}
	if a.kpi != nil {
		for _, c := range a.kpi.Current(kpi.WindowShift) {
			shifts[c.Asset] = c
		}
	}
	for _, m := range a.live.Machines() {
		ms := MachineStatus{Site: m.Asset.Site, Area: m.Asset.Area, Line: m.Asset.Line, Machine: m.Asset.Machine,
			MachineType: m.MachineType, Source: m.Source, LastSeen: m.LastSeen}
		for name, v := range m.Values {
			ms.Values = append(ms.Values, SignalValue{Signal: name, Value: v.Value.Format(), Unit: v.Unit,
				Quality: v.Quality.String(), AgeSeconds: max(now.Sub(v.Time).Seconds(), 0)})
		}
		sort.Slice(ms.Values, func(i, j int) bool { return ms.Values[i].Signal < ms.Values[j].Signal })
		from := now.Add(-timelineSpan)
		if c, ok := shifts[m.Asset]; ok {
			k := c.KPIs
			sk := &ShiftKPIs{Name: c.Shift, Start: c.Start, Good: k.Good, Reject: k.Reject}
			if k.HasAvailability {
				sk.Availability = &k.Availability
				sk.OEE = &k.OEE
			}
			if k.HasPerformance {
				sk.Performance = &k.Performance
			}
			if k.HasQuality {
				sk.Quality = &k.Quality
			}
			ms.Shift = sk
			from = c.Start
		}
		if n := len(m.States); n > 0 {
			ms.State, ms.StateSince = m.States[n-1].State, m.States[n-1].Time
			// The machine's own clock ends the timeline, so a simulator
			// running ahead of the wall clock still draws.
			end := now
			if v, ok := m.Values[collector.SignalState]; ok && v.Time.After(end) {
				end = v.Time
			}
			for i, s := range m.States {
				to := end
				if i+1 < n {
					to = m.States[i+1].Time
				}
				if to.Before(from) {
					continue
				}
				start := s.Time
				if start.Before(from) {
					start = from
				}
				ms.Timeline = append(ms.Timeline, TimelineEntry{State: s.State, From: start, To: to})
			}
		}
		st.Machines = append(st.Machines, ms)
	}
	return st
}

// sourceCounters reads the per-source message and bad input counts from
// the agent's own metrics, so the page and /metrics never disagree.
func (a *Agent) sourceCounters() (bad map[string]map[string]int64, msgs map[string]int64) {
	bad, msgs = map[string]map[string]int64{}, map[string]int64{}
	mfs, err := a.registry.Gather()
	if err != nil {
		return bad, msgs
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "shopfloor_source_bad_inputs_total":
			for _, m := range mf.GetMetric() {
				var src, reason string
				for _, l := range m.GetLabel() {
					switch l.GetName() {
					case "source":
						src = l.GetValue()
					case "reason":
						reason = l.GetValue()
					}
				}
				if bad[src] == nil {
					bad[src] = map[string]int64{}
				}
				bad[src][reason] = int64(m.GetCounter().GetValue())
			}
		case "shopfloor_source_messages_total":
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "source" {
						msgs[l.GetValue()] = int64(m.GetCounter().GetValue())
					}
				}
			}
		}
	}
	return bad, msgs
}

// describeSource names a source's protocol, endpoint and security.
func describeSource(sc SourceConfig) (kind, endpoint, security string) {
	security = "none"
	switch {
	case sc.Sparkplug != nil:
		kind, endpoint = "sparkplug", sc.Sparkplug.URL
	case sc.MQTT != nil:
		kind, endpoint = "mqtt", sc.MQTT.URL
	case sc.OPCUA != nil:
		kind, endpoint = "opcua", sc.OPCUA.Endpoint
		security = sc.OPCUA.SecurityPolicy
		if sc.OPCUA.SecurityMode != "" && sc.OPCUA.SecurityPolicy != "None" {
			security += " " + sc.OPCUA.SecurityMode
		}
		if sc.OPCUA.Auth.Method == "username" {
			security += ", user " + sc.OPCUA.Auth.Username
		} else if sc.OPCUA.Auth.Method == "certificate" {
			security += ", certificate login"
		}
		return kind, redactURL(endpoint), security
	}
	if u, err := url.Parse(endpoint); err == nil {
		switch strings.ToLower(u.Scheme) {
		case "ssl", "tls", "mqtts", "wss":
			security = "tls"
		}
	}
	var user string
	if sc.MQTT != nil {
		user = sc.MQTT.Username
	} else if sc.Sparkplug != nil {
		user = sc.Sparkplug.Username
	}
	if user != "" {
		security += ", user " + user
	}
	return kind, redactURL(endpoint), security
}

// redactURL drops a password written into a URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	return u.Redacted()
}

func (a *Agent) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(a.status())
}

func (a *Agent) servePage(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
	_, _ = w.Write(statusPage)
}

// requireAuth lets a request through when it carries the configured basic
// auth or bearer token, or when none is configured.
func (a *Agent) requireAuth(h http.Handler) http.Handler {
	auth := a.cfg.Agent.HTTP.Auth
	if !auth.enabled() {
		return h
	}
	eq := func(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if auth.Token != "" {
			if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && eq(tok, auth.Token.Reveal()) {
				h.ServeHTTP(w, r)
				return
			}
		}
		if auth.Username != "" {
			if u, p, ok := r.BasicAuth(); ok && eq(u, auth.Username) && eq(p, auth.Password.Reveal()) {
				h.ServeHTTP(w, r)
				return
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="shopfloor agent"`)
		}
		http.Error(w, "unauthorized", http.StatusUnauthorized)
	})
}

// loopbackListen reports whether addr binds to loopback only.
func loopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
