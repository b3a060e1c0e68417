package kpi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/google/renameio/v2"
	"github.com/noordoostpolder/shopfloor/collector"
)

// Window kinds, the window tag of the kpi measurement.
const (
	WindowMinute = "1m"
	WindowHour   = "1h"
	WindowShift  = "shift"
	WindowDay    = "day"
)

// Totals are the additive parts of the KPIs of one window; ratios are
// computed from them, so windows and machines roll up by adding.
type Totals struct {
	// Seconds per category, inside planned time.
	Seconds map[Category]float64 `json:"seconds,omitempty"`
	// UnplannedS is time outside planned time (breaks, no shift).
	UnplannedS float64 `json:"unplanned_s,omitempty"`
	// Good, Reject and IdealS (produced × ideal cycle time) count parts
	// made in planned time; Failures counts entries into a failure state.
	Good     int64   `json:"good,omitempty"`
	Reject   int64   `json:"reject,omitempty"`
	IdealS   float64 `json:"ideal_s,omitempty"`
	Failures int64   `json:"failures,omitempty"`
	// GoodAll and EnergyWh cover the whole window, planned or not.
	GoodAll  int64   `json:"good_all,omitempty"`
	EnergyWh float64 `json:"energy_wh,omitempty"`
}

func (t *Totals) add(o *Totals) {
	for c, s := range o.Seconds {
		t.addSeconds(c, s)
	}
	t.UnplannedS += o.UnplannedS
	t.Good += o.Good
	t.Reject += o.Reject
	t.IdealS += o.IdealS
	t.Failures += o.Failures
	t.GoodAll += o.GoodAll
	t.EnergyWh += o.EnergyWh
}

func (t *Totals) addSeconds(c Category, s float64) {
	if t.Seconds == nil {
		t.Seconds = map[Category]float64{}
	}
	t.Seconds[c] += s
}

// KPIs are the values of one window.
type KPIs struct {
	PlannedS, RunS, IdleS, SetupS, AlarmS, UnknownS, PlannedDowntimeS float64
	Availability, Performance, Quality, OEE                           float64
	// HasRatios is false when there was no planned busy time (or nothing
	// produced for quality); the ratios are then not reported.
	HasAvailability, HasPerformance, HasQuality bool
	// PerformanceSuspect flags a performance above 1: the ideal cycle
	// time is set too long for what the machine does.
	PerformanceSuspect bool
	Good, Reject       int64
	EnergyWh           float64
	EnergyPerGoodPart  float64
	HasEnergyPerPart   bool
	MTBF, MTTR         float64
	HasMTBF            bool
}

// Compute derives the KPIs from totals. It is the single place the
// formulas live.
func (t *Totals) Compute() KPIs {
	k := KPIs{
		RunS:             t.Seconds[Production],
		IdleS:            t.Seconds[Delay],
		SetupS:           t.Seconds[Setup],
		AlarmS:           t.Seconds[Failure],
		UnknownS:         t.Seconds[Unknown],
		PlannedDowntimeS: t.Seconds[PlannedDowntime],
		Good:             t.Good,
		Reject:           t.Reject,
		EnergyWh:         t.EnergyWh,
	}
	k.PlannedS = k.RunS + k.IdleS + k.SetupS + k.AlarmS
	if k.PlannedS > 0 {
		k.Availability, k.HasAvailability = k.RunS/k.PlannedS, true
	}
	if k.RunS > 0 {
		k.Performance, k.HasPerformance = t.IdealS/k.RunS, true
		k.PerformanceSuspect = k.Performance > 1.0001
	} else if k.HasAvailability {
		k.Performance, k.HasPerformance = 0, true
	}
	if produced := t.Good + t.Reject; produced > 0 {
		k.Quality, k.HasQuality = float64(t.Good)/float64(produced), true
	}
	if k.HasAvailability && k.HasPerformance && k.HasQuality {
		k.OEE = k.Availability * k.Performance * k.Quality
	}
	// Planned time without any production has an OEE of plainly 0, with
	// or without a quality; hasOEE says so.
	if t.GoodAll > 0 && t.EnergyWh > 0 {
		k.EnergyPerGoodPart, k.HasEnergyPerPart = t.EnergyWh/float64(t.GoodAll), true
	}
	if t.Failures > 0 {
		k.MTBF, k.MTTR, k.HasMTBF = k.RunS/float64(t.Failures), k.AlarmS/float64(t.Failures), true
	}
	return k
}

// hasOEE reports whether k has an OEE value worth writing.
func (k KPIs) hasOEE() bool {
	return k.HasAvailability && (k.RunS == 0 || k.HasQuality && k.HasPerformance)
}

type minute struct {
	Start      time.Time `json:"start"`
	Planned    bool      `json:"planned"`
	Shift      string    `json:"shift,omitempty"`
	ShiftStart time.Time `json:"shift_start,omitzero"`
	Totals
}

type window struct {
	Kind  string    `json:"kind"`
	Start time.Time `json:"start"`
	Shift string    `json:"shift,omitempty"`
	Totals
}

type event struct {
	T       time.Time `json:"t"`
	Signal  string    `json:"signal"`
	Num     float64   `json:"num,omitempty"`
	Str     string    `json:"str,omitempty"`
	Bad     bool      `json:"bad,omitempty"`
	Arrival int64     `json:"arrival"` // order of arrival, keeps equal times stable
}

type machine struct {
	Asset       collector.Asset `json:"asset"`
	MachineType string          `json:"machine_type,omitempty"`
	Category    Category        `json:"category,omitempty"`
	HasState    bool            `json:"has_state,omitempty"`
	Program     string          `json:"program,omitempty"`
	// IdealFromSignal is the ideal cycle time the machine announced last.
	IdealFromSignal time.Duration `json:"ideal_from_signal,omitempty"`
	LastGood        *int64        `json:"last_good,omitempty"`
	LastReject      *int64        `json:"last_reject,omitempty"`
	LastEnergy      *float64      `json:"last_energy,omitempty"`
	AccountedTo     time.Time     `json:"accounted_to,omitzero"`
	LastEvent       time.Time     `json:"last_event,omitzero"`
	MaxEvent        time.Time     `json:"max_event,omitzero"`
	Pending         []event       `json:"pending,omitempty"`
	Minutes         []*minute     `json:"minutes,omitempty"` // open, in time order
	Windows         []*window     `json:"windows,omitempty"` // current hour, shift, day
	arrived         time.Time     // wall clock of the last sample
}

// Engine computes KPIs from samples. Observe may be called from many
// goroutines.
type Engine struct {
	cfg   Config
	cal   *calendar
	emit  func([]collector.Sample) error
	log   *slog.Logger
	state string // file the state is kept in
	now   func() time.Time

	mu       sync.Mutex
	machines map[string]*machine
	rollups  map[string]*window // "line|site/area/line|kind|start"
	arrivals int64
	tooLate  int64
	dirty    bool
	out      []collector.Sample
}

// relevant are the signals the engine reads.
var relevant = map[string]bool{
	collector.SignalState: true, collector.SignalPartCountGood: true, collector.SignalPartCountReject: true,
	collector.SignalProgram: true, collector.SignalEnergy: true,
}

func (e *Engine) relevant(signal string) bool {
	return relevant[signal] || signal != "" && signal == e.cfg.IdealCycleTimeSignal
}

// New builds an engine. emit receives the KPI samples (measurement kpi);
// stateDir keeps the engine's state across restarts.
func New(cfg Config, stateDir string, emit func([]collector.Sample) error, logger *slog.Logger) (*Engine, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cal, err := newCalendar(cfg)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	e := &Engine{cfg: cfg, cal: cal, emit: emit, log: logger, now: time.Now,
		machines: map[string]*machine{}, rollups: map[string]*window{}}
	if stateDir != "" {
		if err := os.MkdirAll(stateDir, 0o750); err != nil {
			return nil, fmt.Errorf("kpi: %w", err)
		}
		e.state = filepath.Join(stateDir, "state.json")
		if err := e.load(); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func assetKey(a collector.Asset) string {
	return a.Site + "\x00" + a.Area + "\x00" + a.Line + "\x00" + a.Machine
}

// Observe feeds samples to the engine.
func (e *Engine) Observe(samples []collector.Sample) {
	any := false
	for i := range samples {
		any = any || e.relevant(samples[i].Signal)
	}
	if !any {
		return // most messages carry no state or counter: skip the lock
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	touched := map[*machine]bool{}
	for i := range samples {
		s := &samples[i]
		if !e.relevant(s.Signal) || s.Window != "" || s.Asset.Machine == "" {
			continue
		}
		k := assetKey(s.Asset)
		m := e.machines[k]
		if m == nil {
			m = &machine{Asset: s.Asset, MachineType: s.MachineType}
			e.machines[k] = m
		}
		m.arrived = now
		t := s.SourceTime
		if t.IsZero() {
			t = s.ReceiveTime
		}
		if !m.AccountedTo.IsZero() && t.Before(m.AccountedTo) {
			e.tooLate++
			continue
		}
		ev := event{T: t, Signal: s.Signal, Bad: s.Quality == collector.QualityBad}
		if f, ok := s.Value.AsFloat(); ok {
			ev.Num = f
		} else {
			ev.Str = s.Value.Str()
		}
		e.arrivals++
		ev.Arrival = e.arrivals
		m.Pending = append(m.Pending, ev)
		if t.After(m.MaxEvent) {
			m.MaxEvent = t
		}
		touched[m] = true
	}
	for m := range touched {
		e.process(m, m.MaxEvent.Add(-e.cfg.Lateness))
	}
	e.flushOut()
}

// TooLate is the number of samples that came after their minute was final.
func (e *Engine) TooLate() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tooLate
}

// advanceSilent moves silent machines on by the wall clock: a machine that
// has sent nothing for MaxGap is followed in real time, its state turning
// unknown, so its windows still close.
func (e *Engine) advanceSilent() {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	for _, m := range e.machines {
		if m.arrived.IsZero() || m.MaxEvent.IsZero() {
			continue
		}
		silent := now.Sub(m.arrived)
		if silent > e.cfg.MaxGap {
			e.process(m, m.MaxEvent.Add(silent-e.cfg.Lateness))
		}
	}
	e.flushOut()
}

func (e *Engine) flushOut() {
	if len(e.out) == 0 {
		return
	}
	if err := e.emit(e.out); err != nil {
		e.log.Error("kpi: cannot queue KPI rows", "rows", len(e.out), "err", err)
	}
	e.out = e.out[:0]
}

// process handles the machine's pending events up to the watermark wm, in
// event-time order, then accounts time up to wm.
func (e *Engine) process(m *machine, wm time.Time) {
	if len(m.Pending) > 1 {
		sort.SliceStable(m.Pending, func(i, j int) bool {
			a, b := m.Pending[i], m.Pending[j]
			return a.T.Before(b.T) || a.T.Equal(b.T) && a.Arrival < b.Arrival
		})
	}
	n := 0
	for _, ev := range m.Pending {
		if ev.T.After(wm) {
			break
		}
		e.advance(m, ev.T)
		e.apply(m, ev)
		n++
	}
	m.Pending = append(m.Pending[:0], m.Pending[n:]...)
	if wm.After(m.AccountedTo) && !m.AccountedTo.IsZero() {
		e.advance(m, wm)
	}
	e.dirty = true
}

// advance accounts the time from AccountedTo to t in the machine's current
// category, the part beyond LastEvent+MaxGap as unknown, and closes the
// minutes that are then complete.
func (e *Engine) advance(m *machine, t time.Time) {
	if m.AccountedTo.IsZero() {
		m.AccountedTo = t
		return
	}
	if !t.After(m.AccountedTo) {
		return
	}
	cat := m.Category
	if !m.HasState {
		cat = Unknown
	}
	gapEnd := m.LastEvent.Add(e.cfg.MaxGap)
	if m.AccountedTo.Before(gapEnd) {
		e.account(m, m.AccountedTo, minTime(t, gapEnd), cat)
	}
	if t.After(gapEnd) {
		e.account(m, maxTime(m.AccountedTo, gapEnd), t, Unknown)
	}
	m.AccountedTo = t
	for len(m.Minutes) > 0 && !m.Minutes[0].Start.Add(time.Minute).After(t) {
		e.closeMinute(m, m.Minutes[0])
		m.Minutes = m.Minutes[1:]
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (e *Engine) account(m *machine, from, to time.Time, cat Category) {
	for cur := from; cur.Before(to); {
		mi := e.minuteOf(m, cur)
		end := minTime(to, mi.Start.Add(time.Minute))
		secs := end.Sub(cur).Seconds()
		if mi.Planned {
			mi.addSeconds(cat, secs)
		} else {
			mi.UnplannedS += secs
		}
		cur = end
	}
}

// minuteOf returns the open minute bucket holding t, creating it (and any
// minutes between) as needed.
func (e *Engine) minuteOf(m *machine, t time.Time) *minute {
	start := t.Truncate(time.Minute)
	for i := len(m.Minutes) - 1; i >= 0; i-- {
		if m.Minutes[i].Start.Equal(start) {
			return m.Minutes[i]
		}
		if m.Minutes[i].Start.Before(start) {
			break
		}
	}
	planned, shiftName, shiftStart := e.cal.minuteInfo(start)
	mi := &minute{Start: start, Planned: planned, Shift: shiftName, ShiftStart: shiftStart}
	m.Minutes = append(m.Minutes, mi)
	sort.Slice(m.Minutes, func(i, j int) bool { return m.Minutes[i].Start.Before(m.Minutes[j].Start) })
	return mi
}

func (e *Engine) categoryOf(m *machine, state string) Category {
	if mc, ok := e.cfg.Machines[m.Asset.Machine]; ok {
		if c, ok := mc.States[state]; ok {
			return c
		}
	}
	if c, ok := e.cfg.States[state]; ok {
		return c
	}
	if c, ok := DefaultCategories[state]; ok {
		return c
	}
	return Unknown
}

func (e *Engine) idealCycle(m *machine) time.Duration {
	if m.IdealFromSignal > 0 {
		return m.IdealFromSignal
	}
	if mc, ok := e.cfg.Machines[m.Asset.Machine]; ok {
		if d, ok := mc.Programs[m.Program]; ok && m.Program != "" {
			return d
		}
		if mc.IdealCycleTime > 0 {
			return mc.IdealCycleTime
		}
	}
	return e.cfg.IdealCycleTime
}

// counterDelta is how far a cumulative counter moved. A counter that went
// down was reset (a controller restart) or wrapped: it counts from zero
// again, so its new value is the increase.
func counterDelta(last *int64, v int64) int64 {
	if last == nil {
		return 0
	}
	if v < *last {
		return v
	}
	return v - *last
}

func (e *Engine) apply(m *machine, ev event) {
	m.LastEvent = ev.T
	switch ev.Signal {
	case collector.SignalState:
		cat := e.categoryOf(m, ev.Str)
		if ev.Bad {
			cat = Unknown
		}
		if cat == Failure && (!m.HasState || m.Category != Failure) {
			if mi := e.minuteOf(m, ev.T); mi.Planned {
				mi.Failures++
			}
		}
		m.Category, m.HasState = cat, true
	case collector.SignalProgram:
		m.Program = ev.Str
	case e.cfg.IdealCycleTimeSignal:
		if !ev.Bad && ev.Num > 0 && !math.IsInf(ev.Num, 0) {
			m.IdealFromSignal = time.Duration(ev.Num * float64(time.Second))
		}
	case collector.SignalPartCountGood, collector.SignalPartCountReject:
		if ev.Bad || math.IsNaN(ev.Num) {
			return
		}
		v := int64(ev.Num)
		last := &m.LastGood
		if ev.Signal == collector.SignalPartCountReject {
			last = &m.LastReject
		}
		d := counterDelta(*last, v)
		*last = &v
		if d <= 0 {
			return
		}
		mi := e.minuteOf(m, ev.T)
		if ev.Signal == collector.SignalPartCountGood {
			mi.GoodAll += d
		}
		if !mi.Planned {
			return
		}
		if ev.Signal == collector.SignalPartCountGood {
			mi.Good += d
		} else {
			mi.Reject += d
		}
		mi.IdealS += float64(d) * e.idealCycle(m).Seconds()
	case collector.SignalEnergy:
		if ev.Bad || math.IsNaN(ev.Num) {
			return
		}
		v := ev.Num
		if m.LastEnergy != nil {
			d := v - *m.LastEnergy
			if d < 0 {
				d = v
			}
			e.minuteOf(m, ev.T).EnergyWh += d
		}
		m.LastEnergy = &v
	}
}

// closeMinute adds a complete minute to the hour, shift and day of its
// machine and of its line and site, and emits the rows of all of them.
func (e *Engine) closeMinute(m *machine, mi *minute) {
	hour, day := e.cal.hourStart(mi.Start), e.cal.dayStart(mi.Start)
	e.row(m.Asset, m.MachineType, WindowMinute, mi.Start, "", &mi.Totals)
	type win struct {
		kind, shift string
		start       time.Time
	}
	wins := []win{{WindowHour, "", hour}, {WindowDay, "", day}}
	if mi.Shift != "" {
		wins = append(wins, win{WindowShift, mi.Shift, mi.ShiftStart})
	}
	// Roll-ups: the machine's line, and its site, when the asset has them.
	var rollups []collector.Asset
	if m.Asset.Line != "" || m.Asset.Area != "" {
		rollups = append(rollups, collector.Asset{Site: m.Asset.Site, Area: m.Asset.Area, Line: m.Asset.Line})
	}
	if m.Asset.Site != "" {
		rollups = append(rollups, collector.Asset{Site: m.Asset.Site})
	}
	for _, w := range append([]win{{WindowMinute, "", mi.Start}}, wins...) {
		if w.kind != WindowMinute {
			acc := m.window(w.kind, w.start, w.shift)
			acc.add(&mi.Totals)
			e.row(m.Asset, m.MachineType, w.kind, w.start, w.shift, &acc.Totals)
		}
		for _, a := range rollups {
			key := fmt.Sprintf("%s|%s|%s", assetKey(a), w.kind, w.start.UTC().Format(time.RFC3339))
			r := e.rollups[key]
			if r == nil {
				r = &window{Kind: w.kind, Start: w.start, Shift: w.shift}
				e.rollups[key] = r
			}
			r.add(&mi.Totals)
			e.row(a, "", w.kind, w.start, w.shift, &r.Totals)
		}
	}
	// Roll-ups of windows that ended more than two days ago are final.
	cutoff := mi.Start.Add(-50 * time.Hour)
	for k, r := range e.rollups {
		if r.Start.Before(cutoff) {
			delete(e.rollups, k)
		}
	}
}

// window returns the machine's accumulator for a window, dropping older
// ones of the same kind: minutes close in order, so they are complete.
func (m *machine) window(kind string, start time.Time, shift string) *window {
	keep := m.Windows[:0]
	var found *window
	for _, w := range m.Windows {
		switch {
		case w.Kind == kind && w.Start.Equal(start):
			found = w
		case w.Kind == kind && w.Start.Before(start):
			continue
		}
		keep = append(keep, w)
	}
	m.Windows = keep
	if found == nil {
		found = &window{Kind: kind, Start: start, Shift: shift}
		m.Windows = append(m.Windows, found)
	}
	return found
}

// row appends the KPI samples of one window to the output. The timestamp
// is the window's start, so a window written again as it grows overwrites
// its earlier row.
func (e *Engine) row(a collector.Asset, machineType, kind string, start time.Time, shift string, t *Totals) {
	k := t.Compute()
	now := e.now()
	add := func(field string, v collector.Value) {
		e.out = append(e.out, collector.Sample{Asset: a, MachineType: machineType, Signal: field, Value: v,
			SourceTime: start, ReceiveTime: now, Window: kind})
	}
	f := func(field string, v float64) { add(field, collector.Float(v)) }
	f("planned_s", k.PlannedS)
	f("run_s", k.RunS)
	f("idle_s", k.IdleS)
	f("setup_s", k.SetupS)
	f("alarm_s", k.AlarmS)
	f("unknown_s", k.UnknownS)
	f("planned_downtime_s", k.PlannedDowntimeS)
	f("unplanned_s", t.UnplannedS)
	add("good", collector.Int(k.Good))
	add("reject", collector.Int(k.Reject))
	f("energy_wh", k.EnergyWh)
	if k.HasAvailability {
		f("availability", k.Availability)
	}
	if k.HasPerformance {
		f("performance", k.Performance)
		add("performance_suspect", collector.Bool(k.PerformanceSuspect))
	}
	if k.HasQuality {
		f("quality", k.Quality)
	}
	if k.hasOEE() {
		f("oee", k.OEE)
	}
	if k.HasEnergyPerPart {
		f("energy_per_good_part_wh", k.EnergyPerGoodPart)
	}
	if k.HasMTBF {
		f("mtbf_s", k.MTBF)
		f("mttr_s", k.MTTR)
	}
	if shift != "" {
		add("shift", collector.String(shift))
	}
}

// Tick moves silent machines on and saves the state every few seconds
// until ctx is done. The caller saves a last time once no more samples
// come.
func (e *Engine) Tick(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.advanceSilent()
			if err := e.Save(); err != nil {
				e.log.Error("kpi: cannot save state; a restart would lose this shift's KPIs so far", "file", e.state, "err", err)
			}
		}
	}
}

type savedState struct {
	Version  int                `json:"version"`
	Machines []*machine         `json:"machines"`
	Rollups  map[string]*window `json:"rollups"`
	TooLate  int64              `json:"too_late"`
	Arrivals int64              `json:"arrivals"`
}

// Save writes the engine's state, atomically, so a restart mid-shift
// continues where this run stopped.
func (e *Engine) Save() error {
	if e.state == "" {
		return nil
	}
	e.mu.Lock()
	if !e.dirty {
		e.mu.Unlock()
		return nil
	}
	st := savedState{Version: 1, Rollups: e.rollups, TooLate: e.tooLate, Arrivals: e.arrivals}
	for _, m := range e.machines {
		st.Machines = append(st.Machines, m)
	}
	b, err := json.Marshal(st)
	e.dirty = false
	e.mu.Unlock()
	if err != nil {
		return fmt.Errorf("kpi: save: %w", err)
	}
	if err := renameio.WriteFile(e.state, b, 0o640); err != nil {
		return fmt.Errorf("kpi: save: %w", err)
	}
	return nil
}

func (e *Engine) load() error {
	b, err := os.ReadFile(e.state)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kpi: read state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil || st.Version != 1 {
		// Starting fresh loses this shift's KPIs so far, not raw data;
		// refusing to start would lose more.
		e.log.Error("kpi: the saved state is unreadable; starting fresh", "file", e.state, "err", err)
		return nil
	}
	now := e.now()
	for _, m := range st.Machines {
		// The backlog a broker kept for us arrives after the restart:
		// give it MaxGap before a silent machine is followed by the clock.
		m.arrived = now
		e.machines[assetKey(m.Asset)] = m
	}
	if st.Rollups != nil {
		e.rollups = st.Rollups
	}
	e.tooLate, e.arrivals = st.TooLate, st.Arrivals
	e.log.Info("kpi: state restored", "file", e.state, "machines", len(st.Machines))
	return nil
}

// Current is a machine's KPIs for its current window of one kind.
type Current struct {
	Asset collector.Asset
	Start time.Time
	Shift string
	KPIs  KPIs
}

// Current returns, per machine, the KPIs of its latest window of kind
// (WindowShift, WindowHour, WindowDay) as far as its minutes are final,
// for the status page.
func (e *Engine) Current(kind string) []Current {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Current, 0, len(e.machines))
	for _, m := range e.machines {
		var latest *window
		for _, w := range m.Windows {
			if w.Kind == kind && (latest == nil || w.Start.After(latest.Start)) {
				latest = w
			}
		}
		if latest != nil {
			out = append(out, Current{Asset: m.Asset, Start: latest.Start, Shift: latest.Shift, KPIs: latest.Compute()})
		}
	}
	return out
}
