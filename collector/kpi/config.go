// Package kpi computes OEE and the time model of ISO 22400-2 per machine,
// line and site from the normalised samples, on event time: a recorded
// shift replayed fast gives the same numbers as living through it.
//
// The formulas, with every time inside planned busy time (PBT: shift time
// minus breaks, days off, planned downtime periods and time in a planned
// downtime state such as maintenance, and minus unknown time):
//
//	availability = APT / PBT                   APT: time in a production state
//	performance  = Σ(produced × ideal cycle time) / APT
//	quality      = good / (good + reject)
//	OEE          = availability × performance × quality
//	MTBF         = APT / failures               failures: entries into a failure state
//	MTTR         = failure time / failures
//	energy per good part = energy / good parts (both over the whole window)
//
// Time with no known state (a gap longer than max_gap, an offline
// machine, a state sample of bad quality) is unknown: reported as
// unknown_s and left out of PBT, never counted as production or as a
// loss. Time before a machine's first sample is not counted at all.
package kpi

import (
	"errors"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

// Category is a class of time of ISO 22400-2.
type Category string

// Categories. A machine state maps to one of them.
const (
	Production      Category = "production"
	Setup           Category = "setup"
	Delay           Category = "delay"
	Failure         Category = "failure"
	PlannedDowntime Category = "planned_downtime"
	Unknown         Category = "unknown"
)

var categories = []Category{Production, Setup, Delay, Failure, PlannedDowntime, Unknown}

// DefaultCategories maps the canonical machine states.
var DefaultCategories = map[string]Category{
	collector.StateRunning:     Production,
	collector.StateIdle:        Delay,
	collector.StateStopped:     Delay,
	collector.StateSetup:       Setup,
	collector.StateAlarm:       Failure,
	collector.StateMaintenance: PlannedDowntime,
	collector.StateOffline:     Unknown,
}

// Config turns the KPI engine on and describes the time model.
type Config struct {
	Enabled bool `yaml:"enabled"`
	// TimeZone is the IANA name the shift calendar is read in; hours and
	// days are local to it. Default UTC.
	TimeZone string `yaml:"time_zone"`
	// Lateness is how long the engine waits for late and out-of-order
	// samples before a minute is final. Later samples are counted and left
	// out of the KPIs (they are still stored as raw data).
	Lateness time.Duration `yaml:"lateness"`
	// MaxGap is the longest silence after which a machine's state is no
	// longer assumed to continue: the rest is unknown time.
	MaxGap time.Duration `yaml:"max_gap"`
	// Shifts make up planned busy time; with none, no time is planned and
	// only counts, energy and state seconds outside PBT are reported.
	Shifts          []ShiftConfig `yaml:"shifts"`
	DaysOff         []string      `yaml:"days_off"`
	PlannedDowntime []Period      `yaml:"planned_downtime"`
	// States overrides DefaultCategories: state -> category.
	States map[string]Category `yaml:"states"`
	// IdealCycleTime per part for every machine, unless a machine says
	// otherwise.
	IdealCycleTime time.Duration `yaml:"ideal_cycle_time"`
	// IdealCycleTimeSignal names a signal, in seconds, by which a machine
	// announces the ideal cycle time of what it is making now (a CNC
	// that reads it from its part program). When a machine has sent it,
	// it wins over the configured times.
	IdealCycleTimeSignal string `yaml:"ideal_cycle_time_signal"`
	// Machines refine the defaults per machine name.
	Machines map[string]MachineConfig `yaml:"machines"`
}

// MachineConfig refines the KPI settings of one machine.
type MachineConfig struct {
	IdealCycleTime time.Duration `yaml:"ideal_cycle_time"`
	// Programs give an ideal cycle time per program name (the program
	// signal); other programs use IdealCycleTime.
	Programs map[string]time.Duration `yaml:"programs"`
	States   map[string]Category      `yaml:"states"`
}

// SetDefaults fills unset values.
func (c *Config) SetDefaults() {
	if c.TimeZone == "" {
		c.TimeZone = "UTC"
	}
	if c.Lateness == 0 {
		c.Lateness = 30 * time.Second
	}
	if c.MaxGap == 0 {
		c.MaxGap = 5 * time.Minute
	}
}

// Validate reports every problem, with keys relative to the kpi section.
func (c Config) Validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	if _, err := newCalendar(c); err != nil {
		errs = append(errs, err)
	}
	if c.Lateness < 0 || c.Lateness > time.Hour {
		errs = append(errs, config.Invalid("lateness", "must be between 0 and 1h, got %s", c.Lateness))
	}
	if c.MaxGap < time.Second {
		errs = append(errs, config.Invalid("max_gap", "must be at least 1s, got %s", c.MaxGap))
	}
	errs = append(errs, checkStates("states", c.States))
	if c.IdealCycleTime < 0 {
		errs = append(errs, config.Invalid("ideal_cycle_time", "must not be negative"))
	}
	for name, m := range c.Machines {
		key := "machines." + name
		errs = append(errs, checkStates(key+".states", m.States))
		if m.IdealCycleTime < 0 {
			errs = append(errs, config.Invalid(key+".ideal_cycle_time", "must not be negative"))
		}
		for p, d := range m.Programs {
			if d <= 0 {
				errs = append(errs, config.Invalid(key+".programs."+p, "must be a positive duration such as 45s"))
			}
		}
	}
	if c.IdealCycleTime == 0 && len(c.Machines) == 0 && c.IdealCycleTimeSignal == "" {
		errs = append(errs, config.Invalid("ideal_cycle_time", "is needed for performance and OEE; set it (e.g. 60s) or per machine under machines"))
	}
	return errors.Join(errs...)
}

func checkStates(key string, m map[string]Category) error {
	var errs []error
	for state, cat := range m {
		if !collector.IsState(state) {
			errs = append(errs, config.Invalid(key+"."+state, "%q is not a machine state", state))
		}
		ok := false
		for _, c := range categories {
			ok = ok || c == cat
		}
		if !ok {
			errs = append(errs, config.Invalid(key+"."+state, "%q is not a category; use production, setup, delay, failure, planned_downtime or unknown", cat))
		}
	}
	return errors.Join(errs...)
}
