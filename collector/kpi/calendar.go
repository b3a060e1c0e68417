package kpi

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

// ShiftConfig is one shift of the calendar, in the calendar's local time.
type ShiftConfig struct {
	// Name identifies the shift in the KPI rows (early, late, night).
	Name string `yaml:"name"`
	// Start and End are local clock times, "06:00" and "14:00". An End at
	// or before Start ends on the next day ("22:00" to "06:00"); "24:00"
	// is midnight at the end of the day.
	Start string `yaml:"start"`
	End   string `yaml:"end"`
	// Days the shift starts on: mon, tue, wed, thu, fri, sat, sun. Empty
	// means every day.
	Days []string `yaml:"days"`
	// Breaks are unplanned for production: they are not planned busy time.
	Breaks []PeriodOfDay `yaml:"breaks"`
}

// PeriodOfDay is a stretch of local clock time within a shift.
type PeriodOfDay struct {
	Start string `yaml:"start"`
	End   string `yaml:"end"`
}

// Period is a stretch of local calendar time, "2026-12-24 06:00".
type Period struct {
	From string `yaml:"from"`
	To   string `yaml:"to"`
}

// calendar answers, for any minute, whether it is planned busy time and
// in which shift. Every time in the configuration is whole minutes, so a
// minute is entirely planned or not.
type calendar struct {
	loc     *time.Location
	shifts  []shift
	daysOff map[string]bool // local dates, 2006-01-02
	planned [][2]time.Time  // planned downtime, absolute
}

type shift struct {
	name       string
	start, end int // minutes after local midnight of the start day; end may pass 1440
	days       [7]bool
	breaks     [][2]int // minutes after local midnight of the start day
}

var weekdays = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday,
	"wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// clock reads "HH:MM" as minutes after midnight; "24:00" is 1440.
func clock(s string) (int, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(m) != 2 || hh < 0 || mm < 0 || mm > 59 || hh > 24 || hh == 24 && mm != 0 {
		return 0, fmt.Errorf("%q is not a clock time; write HH:MM, such as 06:00 or 24:00", s)
	}
	return hh*60 + mm, nil
}

func newCalendar(c Config) (*calendar, error) {
	loc, err := time.LoadLocation(c.TimeZone)
	if err != nil {
		return nil, config.Invalid("time_zone", "%q is not a time zone name such as Europe/Amsterdam or UTC: %v", c.TimeZone, err)
	}
	cal := &calendar{loc: loc, daysOff: map[string]bool{}}
	var errs []error
	for i, sc := range c.Shifts {
		key := config.Index("shifts", i)
		sh, err := compileShift(sc)
		if err != nil {
			errs = append(errs, config.Nest(key, err))
			continue
		}
		cal.shifts = append(cal.shifts, sh)
	}
	for i, d := range c.DaysOff {
		if _, err := time.ParseInLocation("2006-01-02", d, loc); err != nil {
			errs = append(errs, config.Invalid(config.Index("days_off", i), "%q is not a date; write YYYY-MM-DD", d))
			continue
		}
		cal.daysOff[d] = true
	}
	for i, p := range c.PlannedDowntime {
		key := config.Index("planned_downtime", i)
		from, err1 := time.ParseInLocation("2006-01-02 15:04", p.From, loc)
		to, err2 := time.ParseInLocation("2006-01-02 15:04", p.To, loc)
		switch {
		case err1 != nil:
			errs = append(errs, config.Invalid(key+".from", "%q is not a local time; write YYYY-MM-DD HH:MM", p.From))
		case err2 != nil:
			errs = append(errs, config.Invalid(key+".to", "%q is not a local time; write YYYY-MM-DD HH:MM", p.To))
		case !to.After(from):
			errs = append(errs, config.Invalid(key+".to", "must be after from"))
		default:
			cal.planned = append(cal.planned, [2]time.Time{from, to})
		}
	}
	return cal, errors.Join(errs...)
}

func compileShift(sc ShiftConfig) (shift, error) {
	var errs []error
	sh := shift{name: sc.Name}
	if strings.TrimSpace(sc.Name) == "" {
		errs = append(errs, config.Missing("name"))
	}
	var err error
	if sh.start, err = clock(sc.Start); err != nil {
		errs = append(errs, config.Invalid("start", "%v", err))
	}
	if sh.end, err = clock(sc.End); err != nil {
		errs = append(errs, config.Invalid("end", "%v", err))
	}
	if sh.end <= sh.start {
		sh.end += 1440
	}
	if len(sc.Days) == 0 {
		for d := range sh.days {
			sh.days[d] = true
		}
	}
	for i, d := range sc.Days {
		wd, ok := weekdays[strings.ToLower(strings.TrimSpace(d))[:min(3, len(strings.TrimSpace(d)))]]
		if !ok {
			errs = append(errs, config.Invalid(config.Index("days", i), "%q is not a day; use mon, tue, wed, thu, fri, sat or sun", d))
			continue
		}
		sh.days[wd] = true
	}
	for i, b := range sc.Breaks {
		key := config.Index("breaks", i)
		s, err1 := clock(b.Start)
		e, err2 := clock(b.End)
		if err1 != nil || err2 != nil {
			errs = append(errs, config.Invalid(key, "start and end must be clock times such as 09:00"))
			continue
		}
		// A break's times are on the shift's clock: in a night shift an
		// 02:00 break is after midnight.
		if s < sh.start {
			s += 1440
		}
		if e <= s {
			e += 1440
		}
		if s < sh.start || e > sh.end {
			errs = append(errs, config.Invalid(key, "%s-%s is not inside the shift %s-%s", b.Start, b.End, sc.Start, sc.End))
			continue
		}
		sh.breaks = append(sh.breaks, [2]int{s, e})
	}
	return sh, errors.Join(errs...)
}

// localAt is the instant of minute m after local midnight of the day d
// (a local date), the way a wall clock in loc reads it, so that shifts on
// a daylight-saving day are an hour shorter or longer.
func (c *calendar) localAt(d time.Time, m int) time.Time {
	return time.Date(d.Year(), d.Month(), d.Day(), 0, m, 0, 0, c.loc)
}

// minuteInfo says whether the minute starting at t is planned busy time,
// and which shift instance it belongs to (zero start when none).
func (c *calendar) minuteInfo(t time.Time) (planned bool, shiftName string, shiftStart time.Time) {
	local := t.In(c.loc)
	today := time.Date(local.Year(), local.Month(), local.Day(), 0, 0, 0, 0, c.loc)
	for _, day := range []time.Time{today.AddDate(0, 0, -1), today} {
		if c.daysOff[day.Format("2006-01-02")] {
			continue
		}
		for _, sh := range c.shifts {
			if !sh.days[day.Weekday()] {
				continue
			}
			start, end := c.localAt(day, sh.start), c.localAt(day, sh.end)
			if t.Before(start) || !t.Before(end) {
				continue
			}
			planned = true
			for _, b := range sh.breaks {
				if !t.Before(c.localAt(day, b[0])) && t.Before(c.localAt(day, b[1])) {
					planned = false
				}
			}
			for _, p := range c.planned {
				if !t.Before(p[0]) && t.Before(p[1]) {
					planned = false
				}
			}
			return planned, sh.name, start
		}
	}
	return false, "", time.Time{}
}

// hourStart is the start of the local hour holding t. Offsets are used
// rather than local clock readings so the repeated hour of a DST change
// stays two hours, and zones with half-hour offsets work.
func (c *calendar) hourStart(t time.Time) time.Time {
	_, off := t.In(c.loc).Zone()
	d := time.Duration(off) * time.Second
	return t.Add(d).Truncate(time.Hour).Add(-d)
}

// dayStart is local midnight of the day holding t.
func (c *calendar) dayStart(t time.Time) time.Time {
	l := t.In(c.loc)
	return time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, c.loc)
}
