package collector

import (
	"strconv"
	"strings"
)

// SignalSpec describes a canonical signal: the type every source's value is
// coerced to, so that InfluxDB never sees a field change type, and the unit
// it is stored in.
type SignalSpec struct {
	Kind Kind
	Unit string
}

// Canonical signal names, aligned with umati / OPC 40501 machine tools,
// OPC 40010 robotics and MTConnect.
const (
	SignalState           = "state"
	SignalPartCountGood   = "part_count_good"
	SignalPartCountReject = "part_count_reject"
	SignalCycleTime       = "cycle_time_s"
	SignalProgram         = "program"
	SignalAlarmCode       = "alarm_code"
	SignalAlarmText       = "alarm_text"
	SignalSpindleSpeed    = "spindle_speed_rpm"
	SignalSpindleLoad     = "spindle_load_pct"
	SignalFeedRate        = "feed_rate_mm_min"
	SignalFeedOverride    = "feed_override_pct"
	SignalPower           = "power_w"
	SignalEnergy          = "energy_wh"
	SignalTemperature     = "temperature_c"
	SignalTCPSpeed        = "tcp_speed_mm_s"
	SignalPayload         = "payload_kg"
	SignalJointTorque     = "joint_torque_nm" // one per axis: joint_torque_nm_1 ... _6
	SignalCycleCount      = "cycle_count"
)

// Machine states, the values of the state signal.
const (
	StateRunning     = "running"
	StateIdle        = "idle"
	StateStopped     = "stopped"
	StateSetup       = "setup"
	StateAlarm       = "alarm"
	StateMaintenance = "maintenance"
	StateOffline     = "offline"
)

// States lists every valid machine state.
var States = []string{StateRunning, StateIdle, StateStopped, StateSetup, StateAlarm, StateMaintenance, StateOffline}

// alarm_code is a string because controllers mix numeric and textual codes
// and a field may only have one type.
var canonical = map[string]SignalSpec{
	SignalState:           {KindString, ""},
	SignalPartCountGood:   {KindInt, ""},
	SignalPartCountReject: {KindInt, ""},
	SignalCycleTime:       {KindFloat, "s"},
	SignalProgram:         {KindString, ""},
	SignalAlarmCode:       {KindString, ""},
	SignalAlarmText:       {KindString, ""},
	SignalSpindleSpeed:    {KindFloat, "rpm"},
	SignalSpindleLoad:     {KindFloat, "%"},
	SignalFeedRate:        {KindFloat, "mm/min"},
	SignalFeedOverride:    {KindFloat, "%"},
	SignalPower:           {KindFloat, "W"},
	SignalEnergy:          {KindFloat, "Wh"},
	SignalTemperature:     {KindFloat, "°C"},
	SignalTCPSpeed:        {KindFloat, "mm/s"},
	SignalPayload:         {KindFloat, "kg"},
	SignalJointTorque:     {KindFloat, "Nm"},
	SignalCycleCount:      {KindInt, ""},
}

// Canonical returns the spec of a canonical signal name. Per-axis names
// (joint_torque_nm_3) resolve to their base signal.
func Canonical(name string) (SignalSpec, bool) {
	if s, ok := canonical[name]; ok {
		return s, true
	}
	if i := strings.LastIndexByte(name, '_'); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			s, ok := canonical[name[:i]]
			return s, ok
		}
	}
	return SignalSpec{}, false
}

// IsState reports whether s is a valid machine state.
func IsState(s string) bool {
	for _, st := range States {
		if s == st {
			return true
		}
	}
	return false
}

// SanitizeName turns a source's signal name into a field name that needs no
// quoting anywhere: lower case letters, digits and single underscores.
// "Axis.X Load(%)" becomes "axis_x_load".
func SanitizeName(name string) string {
	var b strings.Builder
	b.Grow(len(name))
	pendingUnderscore := false
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case r >= 'A' && r <= 'Z':
			r += 'a' - 'A'
		default:
			pendingUnderscore = b.Len() > 0
			continue
		}
		if pendingUnderscore {
			b.WriteByte('_')
			pendingUnderscore = false
		}
		b.WriteRune(r)
	}
	if b.Len() == 0 {
		return "unnamed"
	}
	return b.String()
}
