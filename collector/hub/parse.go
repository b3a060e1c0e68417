package hub

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/share"
)

// MaxPayloadBytes is the largest contribution read; a real one is about
// 300 bytes.
const MaxPayloadBytes = 4096

// maxMachines is more machines of one class than any member firm has;
// more is a broken agent.
const maxMachines = 10000

// ParseError is a contribution the hub refused. Reason is a short label
// for logs and metrics.
type ParseError struct {
	Reason string
	Err    error
}

func (e *ParseError) Error() string { return e.Reason + ": " + e.Err.Error() }

func (e *ParseError) Unwrap() error { return e.Err }

func refuse(reason, format string, args ...any) error {
	return &ParseError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Parse reads and validates one contribution from its topic and payload,
// against the clock now: the topic must be <prefix>/contrib/<pseudonym>/<class>
// and agree with the payload, the period must be a whole hour that has
// ended and is at most maxAge old, and every KPI must be in its range.
// It never panics on any input.
func Parse(prefix, topic string, payload []byte, now time.Time, maxAge time.Duration) (share.Contribution, error) {
	var c share.Contribution
	rest, ok := strings.CutPrefix(topic, prefix+"/contrib/")
	if !ok {
		return c, refuse("topic", "%q is not under %s/contrib/", topic, prefix)
	}
	pseudonym, class, ok := strings.Cut(rest, "/")
	if !ok || !validPseudonym(pseudonym) || !share.ValidClass(class) {
		return c, refuse("topic", "%q is not %s/contrib/<pseudonym>/<class>", topic, prefix)
	}
	if len(payload) > MaxPayloadBytes {
		return c, refuse("oversized", "%d bytes, at most %d", len(payload), MaxPayloadBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, refuse("invalid_json", "%w", err)
	}
	if dec.More() {
		return c, refuse("invalid_json", "data after the contribution")
	}
	var errs []error
	if c.Version != share.Version {
		errs = append(errs, fmt.Errorf("version %d, want %d", c.Version, share.Version))
	}
	if c.Contributor != pseudonym {
		errs = append(errs, errors.New("contributor differs from the topic's pseudonym"))
	}
	if c.Class != class {
		errs = append(errs, errors.New("class differs from the topic's class"))
	}
	if c.Period != "1h" {
		errs = append(errs, fmt.Errorf("period %q, want 1h", c.Period))
	}
	switch {
	case c.Start.IsZero() || !c.Start.Equal(c.Start.Truncate(time.Hour)):
		errs = append(errs, fmt.Errorf("start %s is not a whole hour", c.Start.Format(time.RFC3339)))
	case c.Start.Add(time.Hour).After(now.Add(5 * time.Minute)):
		// Five minutes of clock skew are forgiven.
		errs = append(errs, fmt.Errorf("period %s has not ended", c.Start.Format(time.RFC3339)))
	case c.Start.Before(now.Add(-maxAge)):
		errs = append(errs, fmt.Errorf("period %s is older than %s", c.Start.Format(time.RFC3339), maxAge))
	}
	if c.Machines < 1 || c.Machines > maxMachines {
		errs = append(errs, fmt.Errorf("machines %d is not between 1 and %d", c.Machines, maxMachines))
	}
	if len(c.KPIs) == 0 {
		errs = append(errs, errors.New("no kpis"))
	}
	for k, v := range c.KPIs {
		if err := checkKPI(k, v); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return c, &ParseError{Reason: "invalid", Err: err}
	}
	c.Start = c.Start.UTC()
	return c, nil
}

func validPseudonym(s string) bool {
	if len(s) != share.PseudonymLen {
		return false
	}
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return false
		}
	}
	return true
}

// checkKPI holds a value to its range. MTBF and MTTR cannot exceed the
// hour they are measured in.
func checkKPI(k string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Errorf("%s is not a number", k)
	}
	hi := 0.0
	switch {
	case share.IsRatio(k):
		hi = 1
	case k == share.KPIMTBF || k == share.KPIMTTR:
		hi = 3600
	case k == share.KPIEnergyPerGoodPart:
		hi = 1e9
	default:
		return fmt.Errorf("unknown kpi %q", k)
	}
	if v < 0 || v > hi {
		return fmt.Errorf("%s = %v is outside 0..%v", k, v, hi)
	}
	return nil
}

// mirrorOverhead is the most the mirror envelope adds to a contribution.
const mirrorOverhead = 64

// MirrorTopic is where a hub passes on a contribution it took from the
// shared subscription, for the other hubs of its group:
// <prefix>/hub/<group>/contrib/<pseudonym>/<class>. Only hubs may read or
// write under <prefix>/hub/ (deploy/cluster/acl).
func MirrorTopic(prefix, group, pseudonym, class string) string {
	return mirrorPrefix(prefix, group) + pseudonym + "/" + class
}

func mirrorPrefix(prefix, group string) string { return prefix + "/hub/" + group + "/contrib/" }

// Mirror is the payload on a MirrorTopic: the contribution as the firm
// sent it and when the hub that took it from the shared subscription
// accepted it, which orders replacements across the hubs of a group.
type Mirror struct {
	// Received is the accepting hub's clock in Unix milliseconds.
	Received int64 `json:"received"`
	// Payload is the contribution's JSON as it came from the firm.
	Payload json.RawMessage `json:"payload"`
}

// ParseMirror reads a contribution another hub of group passed on: the
// topic must be a MirrorTopic, and the payload a Mirror whose contribution
// passes Parse as if it had come on the firm's own topic. It returns the
// contribution and its received stamp, and never panics on any input.
func ParseMirror(prefix, group, topic string, payload []byte, now time.Time, maxAge time.Duration) (share.Contribution, int64, error) {
	rest, ok := strings.CutPrefix(topic, mirrorPrefix(prefix, group))
	if !ok {
		return share.Contribution{}, 0, refuse("topic", "%q is not under %s/hub/%s/contrib/", topic, prefix, group)
	}
	if len(payload) > MaxPayloadBytes+mirrorOverhead {
		return share.Contribution{}, 0, refuse("oversized", "%d bytes, at most %d", len(payload), MaxPayloadBytes+mirrorOverhead)
	}
	var m Mirror
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return share.Contribution{}, 0, refuse("invalid_json", "mirror: %w", err)
	}
	if dec.More() {
		return share.Contribution{}, 0, refuse("invalid_json", "data after the mirror")
	}
	if m.Received <= 0 {
		return share.Contribution{}, 0, refuse("invalid", "mirror without a received stamp")
	}
	c, err := Parse(prefix, prefix+"/contrib/"+rest, m.Payload, now, maxAge)
	return c, m.Received, err
}
