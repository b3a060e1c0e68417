package collector

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// unit is one unit of measure as a linear map to its dimension's base unit:
// base = value*factor + offset. Offsets are only non-zero for temperatures.
type unit struct {
	dim    string
	factor float64
	offset float64
}

// units lists the units mapping rules may name. The spellings are the ones
// PLC programmers and OPC UA EngineeringUnits display names actually use;
// lookups are case-insensitive after trimming, except for the mega/milli
// pairs in caseSensitiveUnits.
var units = map[string]unit{
	// power, base W
	"w": {"power", 1, 0}, "kw": {"power", 1e3, 0},
	// energy, base Wh
	"wh": {"energy", 1, 0}, "kwh": {"energy", 1e3, 0},
	"j": {"energy", 1.0 / 3600, 0}, "kj": {"energy", 1e3 / 3600, 0},
	// temperature, base °C
	"c": {"temperature", 1, 0}, "°c": {"temperature", 1, 0}, "degc": {"temperature", 1, 0}, "celsius": {"temperature", 1, 0},
	"f": {"temperature", 5.0 / 9, -32 * 5.0 / 9}, "°f": {"temperature", 5.0 / 9, -32 * 5.0 / 9}, "degf": {"temperature", 5.0 / 9, -32 * 5.0 / 9}, "fahrenheit": {"temperature", 5.0 / 9, -32 * 5.0 / 9},
	"k": {"temperature", 1, -273.15}, "kelvin": {"temperature", 1, -273.15},
	// rotational speed, base rpm
	"rpm": {"rotation", 1, 0}, "1/min": {"rotation", 1, 0}, "rev/min": {"rotation", 1, 0},
	"rev/s": {"rotation", 60, 0}, "rps": {"rotation", 60, 0}, "1/s": {"rotation", 60, 0}, "hz": {"rotation", 60, 0},
	"rad/s": {"rotation", 60 / (2 * math.Pi), 0},
	// linear speed, base mm/s
	"mm/s": {"speed", 1, 0}, "mm/min": {"speed", 1.0 / 60, 0}, "m/min": {"speed", 1000.0 / 60, 0},
	"m/s": {"speed", 1000, 0}, "in/min": {"speed", 25.4 / 60, 0}, "ipm": {"speed", 25.4 / 60, 0},
	// ratio, base %
	"%": {"ratio", 1, 0}, "pct": {"ratio", 1, 0}, "percent": {"ratio", 1, 0}, "ratio": {"ratio", 100, 0}, "fraction": {"ratio", 100, 0}, "permille": {"ratio", 0.1, 0},
	// time, base s
	"s": {"time", 1, 0}, "sec": {"time", 1, 0}, "ms": {"time", 1e-3, 0}, "us": {"time", 1e-6, 0},
	"min": {"time", 60, 0}, "h": {"time", 3600, 0},
	// mass, base kg
	"kg": {"mass", 1, 0}, "g": {"mass", 1e-3, 0}, "t": {"mass", 1e3, 0}, "lb": {"mass", 0.45359237, 0},
	// torque, base Nm
	"nm": {"torque", 1, 0}, "n·m": {"torque", 1, 0}, "n.m": {"torque", 1, 0}, "knm": {"torque", 1e3, 0},
	// length, base mm
	"mm": {"length", 1, 0}, "cm": {"length", 10, 0}, "m": {"length", 1000, 0}, "in": {"length", 25.4, 0},
}

// caseSensitiveUnits are the spellings where case is the whole meaning:
// MW is a million times W, mW a thousandth. They are looked up exactly.
var caseSensitiveUnits = map[string]unit{
	"MW": {"power", 1e6, 0}, "mW": {"power", 1e-3, 0},
	"MWh": {"energy", 1e6, 0}, "mWh": {"energy", 1e-3, 0},
	"MJ": {"energy", 1e6 / 3600, 0}, "mJ": {"energy", 1e-3 / 3600, 0},
}

func lookupUnit(name string) (unit, bool) {
	name = strings.TrimSpace(name)
	if u, ok := caseSensitiveUnits[name]; ok {
		return u, true
	}
	u, ok := units[strings.ToLower(name)]
	return u, ok
}

// UnitConversion maps a value in one unit to another of the same dimension.
// The zero value is the identity.
type UnitConversion struct {
	factor, offset float64
	set            bool
}

// NewUnitConversion returns the conversion from unit from to unit to, or an
// error naming the units this build knows when either is unknown or their
// dimensions differ.
func NewUnitConversion(from, to string) (UnitConversion, error) {
	uf, ok := lookupUnit(from)
	if !ok {
		return UnitConversion{}, fmt.Errorf("unknown unit %q (known: %s)", from, knownUnits())
	}
	ut, ok := lookupUnit(to)
	if !ok {
		return UnitConversion{}, fmt.Errorf("unknown unit %q (known: %s)", to, knownUnits())
	}
	if uf.dim != ut.dim {
		return UnitConversion{}, fmt.Errorf("cannot convert %s (%s) to %s (%s)", from, uf.dim, to, ut.dim)
	}
	// base = v*ff + fo; v' = (base - to_offset)/tf
	return UnitConversion{
		factor: uf.factor / ut.factor,
		offset: (uf.offset - ut.offset) / ut.factor,
		set:    true,
	}, nil
}

// Apply converts v.
func (c UnitConversion) Apply(v float64) float64 {
	if !c.set {
		return v
	}
	return v*c.factor + c.offset
}

func knownUnits() string {
	names := make([]string, 0, len(units)+len(caseSensitiveUnits))
	for n := range units {
		names = append(names, n)
	}
	for n := range caseSensitiveUnits {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
