// Package collector is the protocol-free core of shopfloor: the Sample data
// model, the Source and Sink interfaces adapters implement, normalisation of
// raw values into canonical signals, and the pipeline that moves samples from
// sources to a sink.
package collector

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Asset is the ISA-95 style place a sample comes from. Empty parts are
// allowed; they are left out of the InfluxDB series key.
type Asset struct {
	Site    string
	Area    string
	Line    string
	Machine string
}

// Quality says how far a value can be trusted. The zero value is QualityGood
// because almost every JSON payload carries no quality at all.
type Quality uint8

// Qualities, ordered from trustworthy to not.
const (
	QualityGood Quality = iota
	QualityUncertain
	QualityBad
)

// String returns the lower-case name used in logs and in InfluxDB.
func (q Quality) String() string {
	switch q {
	case QualityGood:
		return "good"
	case QualityUncertain:
		return "uncertain"
	case QualityBad:
		return "bad"
	}
	return "quality(" + strconv.Itoa(int(q)) + ")"
}

// Kind is the type of a Value.
type Kind uint8

// Value kinds. KindNone marks a sample that carries only a quality (a Bad
// reading with no usable value).
const (
	KindNone Kind = iota
	KindFloat
	KindInt
	KindBool
	KindString
)

// String names the kind for error messages.
func (k Kind) String() string {
	switch k {
	case KindNone:
		return "none"
	case KindFloat:
		return "float"
	case KindInt:
		return "int"
	case KindBool:
		return "bool"
	case KindString:
		return "string"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Value is a typed scalar. It is a small value type rather than an interface
// so that a Sample never allocates for a number.
type Value struct {
	kind Kind
	num  float64
	i    int64
	str  string
}

// Float returns a float value.
func Float(f float64) Value { return Value{kind: KindFloat, num: f} }

// Int returns an integer value.
func Int(i int64) Value { return Value{kind: KindInt, i: i} }

// Bool returns a boolean value.
func Bool(b bool) Value {
	v := Value{kind: KindBool}
	if b {
		v.i = 1
	}
	return v
}

// String returns a string value.
func String(s string) Value { return Value{kind: KindString, str: s} }

// Kind reports the value's type.
func (v Value) Kind() Kind { return v.kind }

// AsFloat returns the value as a float64; ok is false for strings and none.
func (v Value) AsFloat() (f float64, ok bool) {
	switch v.kind {
	case KindFloat:
		return v.num, true
	case KindInt, KindBool:
		return float64(v.i), true
	}
	return 0, false
}

// AsInt returns the value as an int64. Floats convert only when they hold a
// whole number in range, so a counter never silently loses a fraction.
func (v Value) AsInt() (i int64, ok bool) {
	switch v.kind {
	case KindInt, KindBool:
		return v.i, true
	case KindFloat:
		if v.num == math.Trunc(v.num) && v.num >= math.MinInt64 && v.num < math.MaxInt64 {
			return int64(v.num), true
		}
	}
	return 0, false
}

// AsBool returns the value as a bool; numbers are true when non-zero.
func (v Value) AsBool() (b bool, ok bool) {
	switch v.kind {
	case KindBool, KindInt:
		return v.i != 0, true
	case KindFloat:
		return v.num != 0, true
	}
	return false, false
}

// Str returns the string of a KindString value, and "" otherwise. Use
// Format for a textual form of any kind.
func (v Value) Str() string { return v.str }

// Format renders any value as text, the way an enum lookup or a log line
// needs it: integers without a decimal point, floats in shortest form.
func (v Value) Format() string {
	switch v.kind {
	case KindFloat:
		return strconv.FormatFloat(v.num, 'g', -1, 64)
	case KindInt:
		return strconv.FormatInt(v.i, 10)
	case KindBool:
		return strconv.FormatBool(v.i != 0)
	case KindString:
		return v.str
	}
	return ""
}

// GoString helps test failure messages.
func (v Value) GoString() string { return fmt.Sprintf("%s(%s)", v.kind, v.Format()) }

// Sample is one observation of one signal of one machine. It is a plain
// value: adapters create them, the collector rewrites them, sinks encode
// them, and nothing downstream of an adapter sees protocol types.
type Sample struct {
	Asset       Asset
	MachineType string // cnc, robot, ...
	Signal      string // canonical name after normalisation, the source's name before
	Value       Value
	Unit        string
	Quality     Quality
	SourceTime  time.Time // when the machine measured it; the InfluxDB timestamp
	ReceiveTime time.Time // when the agent got it
	// Window is set on samples the agent derived (KPIs) to the window they
	// cover (1m, 1h, shift, day); the sink writes them to its KPI
	// measurement with a window tag. Empty for everything a machine sent.
	Window string
}
