package collector

import (
	"errors"
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

// MappingRule turns one of a source's signals into a canonical signal.
type MappingRule struct {
	// Match is the source's signal name (a JSON path such as "axis.x.load",
	// an OPC UA browse name), or a glob in path.Match syntax over it.
	Match string `yaml:"match"`
	// Signal is the target name, normally canonical (DESIGN.md). Empty means
	// the sanitised source name.
	Signal string `yaml:"signal"`
	// Scale and Offset apply first: v*scale + offset. A nil Scale is 1.
	Scale  *float64 `yaml:"scale"`
	Offset float64  `yaml:"offset"`
	// Unit is the unit the source sends in; the value is converted to the
	// canonical signal's unit (kW to W, °F to °C, rev/s to rpm, ...). For a
	// signal that is not canonical, Unit is just recorded.
	Unit string `yaml:"unit"`
	// States maps the source's values (enum numbers or words) to machine
	// states, for the state signal.
	States map[string]string `yaml:"states"`
	// Deadband drops a numeric value closer than this to the last value
	// passed on for the same machine and signal.
	Deadband float64 `yaml:"deadband"`
	// Drop discards the signal on purpose; without a rule every signal
	// passes through under its sanitised name.
	Drop bool `yaml:"drop"`
}

// Validate reports every problem of the rule.
func (r MappingRule) Validate() error {
	var errs []error
	if r.Match == "" {
		errs = append(errs, config.Missing("match"))
	} else if _, err := path.Match(r.Match, ""); err != nil {
		errs = append(errs, config.Invalid("match", "bad pattern %q: %v", r.Match, err))
	}
	if r.Signal != "" && SanitizeName(r.Signal) != r.Signal {
		errs = append(errs, config.Invalid("signal", "%q is not a valid signal name; use lower case letters, digits and underscores, e.g. %q", r.Signal, SanitizeName(r.Signal)))
	}
	if r.Unit != "" {
		if spec, ok := Canonical(r.Signal); ok && spec.Unit != "" {
			if _, err := NewUnitConversion(r.Unit, spec.Unit); err != nil {
				errs = append(errs, config.Invalid("unit", "%v", err))
			}
		}
	}
	for from, to := range r.States {
		if !IsState(to) {
			errs = append(errs, config.Invalid("states."+from, "%q is not a machine state; use one of %s", to, strings.Join(States, ", ")))
		}
	}
	if r.Deadband < 0 {
		errs = append(errs, config.Invalid("deadband", "must not be negative"))
	}
	return errors.Join(errs...)
}

// AssetRule says where a batch's asset path comes from: fixed values,
// segments of its origin (MQTT topic, OPC UA browse path), and fields of
// the payload. Later sources override earlier ones in that order.
type AssetRule struct {
	Site        string `yaml:"site"`
	Area        string `yaml:"area"`
	Line        string `yaml:"line"`
	Machine     string `yaml:"machine"`
	MachineType string `yaml:"machine_type"`
	// FromOrigin are templates matched against the origin segment by
	// segment: "factory/{line}/{machine}/telemetry". {site}, {area},
	// {line}, {machine} and {machine_type} capture a segment, + matches any
	// one segment and a final # the rest. The first template that matches
	// wins.
	FromOrigin []string `yaml:"from_origin"`
	// FromFields maps an asset part (site, area, line, machine,
	// machine_type) to the payload signal holding it; that signal is used
	// for the asset and not stored as data.
	FromFields map[string]string `yaml:"from_fields"`
}

var assetParts = []string{"site", "area", "line", "machine", "machine_type"}

func isAssetPart(s string) bool {
	for _, p := range assetParts {
		if p == s {
			return true
		}
	}
	return false
}

// Validate reports every problem of the rule.
func (a AssetRule) Validate() error {
	var errs []error
	for i, t := range a.FromOrigin {
		if _, err := compileTemplate(t); err != nil {
			errs = append(errs, config.Invalid(config.Index("from_origin", i), "%v", err))
		}
	}
	for part, field := range a.FromFields {
		if !isAssetPart(part) {
			errs = append(errs, config.Invalid("from_fields."+part, "%q is not an asset part; use one of %s", part, strings.Join(assetParts, ", ")))
		}
		if field == "" {
			errs = append(errs, config.Missing("from_fields."+part))
		}
	}
	return errors.Join(errs...)
}

type segment struct {
	literal string
	capture string // asset part, or "" for + and literals
	any     bool   // +
	rest    bool   // #
}

type template []segment

func compileTemplate(s string) (template, error) {
	if s == "" {
		return nil, errors.New("empty template")
	}
	parts := strings.Split(s, "/")
	t := make(template, len(parts))
	for i, p := range parts {
		switch {
		case p == "+":
			t[i].any = true
		case p == "#":
			if i != len(parts)-1 {
				return nil, fmt.Errorf("template %q: # must be the last segment", s)
			}
			t[i].rest = true
		case strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}"):
			name := p[1 : len(p)-1]
			if !isAssetPart(name) {
				return nil, fmt.Errorf("template %q: {%s} is not an asset part; use one of %s", s, name, strings.Join(assetParts, ", "))
			}
			t[i].capture = name
		case strings.ContainsAny(p, "{}+#"):
			return nil, fmt.Errorf("template %q: segment %q mixes text and a placeholder; a placeholder must be a whole segment", s, p)
		default:
			t[i].literal = p
		}
	}
	return t, nil
}

// match fills the captured parts into a and reports whether origin matched.
func (t template) match(origin string, a *Asset, machineType *string) bool {
	var caps [8]struct{ part, val string }
	n := 0
	rest, done := origin, false
	for _, seg := range t {
		if seg.rest {
			break
		}
		if done {
			return false
		}
		var cur string
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			cur, rest = rest[:j], rest[j+1:]
		} else {
			cur, rest, done = rest, "", true
		}
		switch {
		case seg.any:
		case seg.capture != "":
			if n < len(caps) {
				caps[n].part, caps[n].val = seg.capture, cur
				n++
			}
		default:
			if cur != seg.literal {
				return false
			}
		}
	}
	if !done && !t[len(t)-1].rest {
		return false
	}
	for _, c := range caps[:n] {
		setAssetPart(a, machineType, c.part, c.val)
	}
	return true
}

func setAssetPart(a *Asset, machineType *string, part, val string) {
	switch part {
	case "site":
		a.Site = val
	case "area":
		a.Area = val
	case "line":
		a.Line = val
	case "machine":
		a.Machine = val
	case "machine_type":
		*machineType = val
	}
}

// NormalizeConfig is everything normalisation needs for one source.
type NormalizeConfig struct {
	Asset   AssetRule
	Mapping []MappingRule
}

// Validate reports every problem, with keys relative to the source.
func (c NormalizeConfig) Validate() error {
	var errs []error
	errs = append(errs, config.Nest("asset", c.Asset.Validate()))
	for i, r := range c.Mapping {
		errs = append(errs, config.Nest(config.Index("mapping", i), r.Validate()))
	}
	return errors.Join(errs...)
}

// resolved is what a source signal name maps to, cached per name because
// glob matching and sanitising are too slow to repeat for every sample.
type resolved struct {
	drop     bool
	signal   string
	spec     SignalSpec
	known    bool // canonical
	scale    float64
	offset   float64
	conv     UnitConversion
	ruleUnit bool // the rule names the source unit, so the sample's own is ignored
	unit     string
	states   map[string]string
	deadband float64
}

// Normalizer rewrites a source's batches into canonical samples. It is safe
// for concurrent use.
type Normalizer struct {
	fixed       Asset
	machineType string
	templates   []template
	fromFields  map[string]string // signal -> asset part
	rules       []MappingRule
	cache       sync.Map // source signal name -> *resolved
	units       sync.Map // signal + source unit -> *resolved with that conversion
	mu          sync.Mutex
	last        map[deadbandKey]float64
}

type deadbandKey struct {
	asset       Asset
	machineType string
	signal      string
}

// NewNormalizer compiles c. It returns c.Validate's errors.
func NewNormalizer(c NormalizeConfig) (*Normalizer, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	n := &Normalizer{
		fixed:       Asset{Site: c.Asset.Site, Area: c.Asset.Area, Line: c.Asset.Line, Machine: c.Asset.Machine},
		machineType: c.Asset.MachineType,
		rules:       c.Mapping,
		last:        map[deadbandKey]float64{},
	}
	for _, s := range c.Asset.FromOrigin {
		t, _ := compileTemplate(s)
		n.templates = append(n.templates, t)
	}
	if len(c.Asset.FromFields) > 0 {
		n.fromFields = make(map[string]string, len(c.Asset.FromFields))
		for part, field := range c.Asset.FromFields {
			n.fromFields[field] = part
		}
	}
	return n, nil
}

func (n *Normalizer) resolve(name string) *resolved {
	if r, ok := n.cache.Load(name); ok {
		return r.(*resolved)
	}
	r := &resolved{scale: 1}
	var rule *MappingRule
	for i := range n.rules {
		if ok, _ := path.Match(n.rules[i].Match, name); ok {
			rule = &n.rules[i]
			break
		}
	}
	r.signal = SanitizeName(name)
	if rule != nil {
		r.drop = rule.Drop
		if rule.Signal != "" {
			r.signal = rule.Signal
		}
		if rule.Scale != nil {
			r.scale = *rule.Scale
		}
		r.offset = rule.Offset
		r.unit = rule.Unit
		r.states = rule.States
		r.deadband = rule.Deadband
	}
	r.spec, r.known = Canonical(r.signal)
	if r.known && r.spec.Unit != "" {
		if rule != nil && rule.Unit != "" {
			r.conv, _ = NewUnitConversion(rule.Unit, r.spec.Unit) // validated in NewNormalizer
			r.ruleUnit = true
		}
		r.unit = r.spec.Unit
	}
	actual, _ := n.cache.LoadOrStore(name, r)
	return actual.(*resolved)
}

// Problem is a sample normalisation refused, with its reason label.
type Problem struct {
	Reason string
	Err    error
}

// Normalize appends the canonical samples of b to dst and returns it, with
// one Problem per sample it refused (the other samples are kept).
func (n *Normalizer) Normalize(b Batch, dst []Sample, problems []Problem) ([]Sample, []Problem) {
	asset, mtype := n.fixed, n.machineType
	for _, t := range n.templates {
		if t.match(b.Origin, &asset, &mtype) {
			break
		}
	}
	if n.fromFields != nil {
		for _, s := range b.Samples {
			if part, ok := n.fromFields[s.Signal]; ok && s.Value.Kind() != KindNone {
				setAssetPart(&asset, &mtype, part, s.Value.Format())
			}
		}
	}
	for _, s := range b.Samples {
		if n.fromFields != nil {
			if _, ok := n.fromFields[s.Signal]; ok {
				continue
			}
		}
		r := n.resolve(s.Signal)
		if r.drop {
			continue
		}
		r, uerr := n.withSourceUnit(r, s.Unit)
		v, err := r.convert(s.Value)
		if uerr != nil {
			err = uerr
		}
		if err != nil {
			problems = append(problems, Problem{Reason: err.reason, Err: fmt.Errorf("origin %s, signal %s: %w", b.Origin, s.Signal, err)})
			// A bad quality reading keeps its place in the series as a
			// quality-only sample, so a Bad value is never mistaken for
			// the last good one.
			if s.Quality == QualityGood {
				continue
			}
			v = Value{}
		}
		if s.Asset != (Asset{}) {
			s.Asset = mergeAsset(asset, s.Asset)
		} else {
			s.Asset = asset
		}
		if s.Asset.Machine == "" {
			// A series without a machine tag would be invisible on every
			// dashboard; refusing it points the user at the asset rule.
			problems = append(problems, Problem{Reason: "no_machine", Err: fmt.Errorf("origin %s, signal %s: no machine: set asset.machine, or an asset.from_origin template or asset.from_fields entry that matches", b.Origin, s.Signal)})
			continue
		}
		if s.MachineType == "" {
			s.MachineType = mtype
		}
		s.Signal = r.signal
		s.Value = v
		if r.unit != "" || s.Unit == "" {
			s.Unit = r.unit
		}
		if r.deadband > 0 && n.inDeadband(s, r.deadband) {
			continue
		}
		dst = append(dst, s)
	}
	return dst, problems
}

// mergeAsset lets an adapter that knows part of the asset itself (a
// Sparkplug device id) keep it, and fills the rest from the rules.
func mergeAsset(rule, own Asset) Asset {
	if own.Site == "" {
		own.Site = rule.Site
	}
	if own.Area == "" {
		own.Area = rule.Area
	}
	if own.Line == "" {
		own.Line = rule.Line
	}
	if own.Machine == "" {
		own.Machine = rule.Machine
	}
	return own
}

func (n *Normalizer) inDeadband(s Sample, band float64) bool {
	f, ok := s.Value.AsFloat()
	if !ok || s.Quality != QualityGood {
		return false
	}
	k := deadbandKey{s.Asset, s.MachineType, s.Signal}
	n.mu.Lock()
	defer n.mu.Unlock()
	if last, seen := n.last[k]; seen && math.Abs(f-last) < band {
		return true
	}
	n.last[k] = f
	return false
}

type convError struct {
	reason string
	msg    string
}

func (e *convError) Error() string { return e.msg }

// withSourceUnit returns r converting from the unit the sample itself
// carries (an OPC UA EngineeringUnits, a Sparkplug engUnit property) when
// the rule names none and it differs from the canonical unit.
func (n *Normalizer) withSourceUnit(r *resolved, unit string) (*resolved, *convError) {
	if !r.known || r.spec.Unit == "" || r.ruleUnit || unit == "" || unit == r.spec.Unit {
		return r, nil
	}
	key := r.signal + "\x00" + unit
	if c, ok := n.units.Load(key); ok {
		return c.(*resolved), nil
	}
	conv, err := NewUnitConversion(unit, r.spec.Unit)
	if err != nil {
		return r, &convError{"unknown_unit", fmt.Sprintf("the source says its unit is %q, which cannot be converted to %s (%v); name the unit in the mapping rule", unit, r.spec.Unit, err)}
	}
	c := *r
	c.conv = conv
	actual, _ := n.units.LoadOrStore(key, &c)
	return actual.(*resolved), nil
}

func (r *resolved) convert(v Value) (Value, *convError) {
	if v.Kind() == KindNone {
		return v, nil
	}
	if r.states != nil {
		if st, ok := r.states[v.Format()]; ok {
			return String(st), nil
		}
		if r.signal == SignalState && !IsState(strings.ToLower(v.Format())) {
			return Value{}, &convError{"unknown_state", fmt.Sprintf("value %q is not in the rule's states map", v.Format())}
		}
	}
	want := v.Kind()
	if r.known {
		want = r.spec.Kind
	} else if want == KindInt && (r.scale != 1 || r.offset != 0) {
		want = KindFloat // a scaled pass-through counter may have a fraction
	}
	switch want {
	case KindString:
		s := v.Format()
		if r.signal == SignalState {
			s = strings.ToLower(s)
			if !IsState(s) {
				return Value{}, &convError{"unknown_state", fmt.Sprintf("%q is not a machine state (%s); add a states map to the mapping rule", v.Format(), strings.Join(States, ", "))}
			}
		}
		return String(s), nil
	case KindBool:
		if b, ok := v.AsBool(); ok {
			return Bool(b), nil
		}
		if b, err := strconv.ParseBool(v.Str()); err == nil {
			return Bool(b), nil
		}
		return Value{}, &convError{"wrong_type", fmt.Sprintf("want a bool, got %s %q", v.Kind(), v.Format())}
	}
	f, ok := v.AsFloat()
	if !ok {
		var err error
		if f, err = strconv.ParseFloat(strings.TrimSpace(v.Str()), 64); err != nil {
			return Value{}, &convError{"wrong_type", fmt.Sprintf("want a number, got %s %q", v.Kind(), v.Format())}
		}
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return Value{}, &convError{"non_finite", fmt.Sprintf("value %v is not a finite number", f)}
	}
	scaled := r.conv.Apply(f*r.scale + r.offset)
	if want == KindInt {
		if v.Kind() == KindInt && r.scale == 1 && r.offset == 0 && !r.conv.set {
			return v, nil
		}
		i, ok := Float(scaled).AsInt()
		if !ok {
			return Value{}, &convError{"wrong_type", fmt.Sprintf("want a whole number, got %v", scaled)}
		}
		return Int(i), nil
	}
	return Float(scaled), nil
}
