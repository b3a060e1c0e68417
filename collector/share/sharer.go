// Package share is the agent's side of cluster benchmarking: it turns the
// KPI engine's hourly rows into one anonymous contribution per machine
// class and sends it to the cluster's MQTT broker under the firm's
// pseudonym, through a store-and-forward queue on disk.
//
// A contribution carries the firm's pseudonym, the machine class, the
// period (the hour, as its start) and the mean OEE, availability,
// performance, quality, MTBF, MTTR and energy per good part of the firm's
// machines of that class, with their number. No firm, site, line or machine
// name and no time finer than the hour leaves the agent. Every
// contribution is also appended, exactly as sent, to
// <data_dir>/share/contributions.jsonl.
package share

import (
	"bytes"
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
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/google/renameio/v2"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/queue"
)

// Windows of the KPI engine this package reads. They are the kpi
// package's constants, repeated so share does not depend on the engine.
const (
	windowMinute = "1m"
	windowHour   = "1h"
)

// keepPeriods is how long a period's rows are kept after it ended, so a
// machine's backlog arriving late still updates the contribution.
const keepPeriods = 48 * time.Hour

// Publisher sends one contribution to the cluster. Publish returns nil
// only once the broker has acknowledged it (QoS 1).
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
	Close()
}

// Sharer collects the KPI engine's rows and sends the contributions. Observe
// may be called from any goroutine.
type Sharer struct {
	cfg       Config
	dir       string
	pseudonym string
	log       *slog.Logger
	pub       Publisher
	q         *queue.Queue
	now       func() time.Time
	local     func([]collector.Sample) error

	sent, failures atomic.Int64

	mu         sync.Mutex
	periods    map[int64]*period
	lastMinute map[string]time.Time // machine -> start of its latest final minute
	dirty      bool
	closed     bool
}

// period is what is known of one hour.
type period struct {
	Start    time.Time              `json:"start"`
	Machines map[string]*machineRow `json:"machines"`
	// Sent is the payload last queued per class, so a contribution is
	// sent again only when it changed.
	Sent map[string]string `json:"sent,omitempty"`
	// Local is the payload last written to the firm's own store per
	// class, kept apart from Sent because that write can fail (at
	// shutdown the pipeline is already closed) and is then retried.
	Local map[string]string `json:"local,omitempty"`
}

// machineRow is the latest hour row of one machine.
type machineRow struct {
	Class   string             `json:"class"`
	KPIs    map[string]float64 `json:"kpis"`
	Suspect bool               `json:"suspect,omitempty"`
}

type savedState struct {
	Version    int                  `json:"version"`
	Periods    []*period            `json:"periods"`
	LastMinute map[string]time.Time `json:"last_minute"`
}

// Option tunes a Sharer beyond its Config.
type Option func(*Sharer)

// WithPublisher replaces the MQTT publisher, for tests.
func WithPublisher(p Publisher) Option { return func(s *Sharer) { s.pub = p } }

// WithLocalCopy hands every contribution, as it is queued, to emit as
// rows of the firm's own KPI store (see LocalRows), so the firm's
// dashboards can show what it shared beside the cluster's quartiles.
func WithLocalCopy(emit func([]collector.Sample) error) Option {
	return func(s *Sharer) { s.local = emit }
}

// LocalWindow is the window tag of the rows WithLocalCopy writes: they sit
// in the kpi measurement beside the engine's 1m, 1h, shift and day rows,
// tagged machine_type = the machine class and without machine, line or
// site, exactly like the contribution.
const LocalWindow = "share"

// LocalRows turns a contribution into the rows WithLocalCopy writes: one
// per KPI, named like the kpi measurement's fields, and "machines", at the
// period's start.
func LocalRows(c Contribution) []collector.Sample {
	rows := make([]collector.Sample, 0, len(c.KPIs)+1)
	add := func(signal string, v collector.Value) {
		rows = append(rows, collector.Sample{MachineType: c.Class, Signal: signal, Value: v,
			SourceTime: c.Start, ReceiveTime: c.Start, Window: LocalWindow})
	}
	for _, k := range KPIs {
		if v, ok := c.KPIs[k]; ok {
			add(k, collector.Float(v))
		}
	}
	add("machines", collector.Int(int64(c.Machines)))
	return rows
}

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(s *Sharer) { s.now = now } }

// New prepares sharing for the agent whose data directory is dataDir: it
// reads (or creates) the firm secret, opens the queue and restores the
// state a previous run saved. It does not contact the broker.
func New(cfg Config, dataDir string, logger *slog.Logger, opts ...Option) (*Sharer, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dir := Dir(dataDir)
	secret, err := LoadOrCreateSecret(dir)
	if err != nil {
		return nil, err
	}
	s := &Sharer{cfg: cfg, dir: dir, pseudonym: Pseudonym(secret), log: logger, now: time.Now,
		periods: map[int64]*period{}, lastMinute: map[string]time.Time{}}
	for _, o := range opts {
		o(s)
	}
	if s.pub == nil {
		clientID := cfg.Broker.ClientID
		if clientID == "" {
			clientID = "sf-" + s.pseudonym
		}
		s.pub, err = newMQTTPublisher(cfg.Broker, clientID, logger)
		if err != nil {
			return nil, err
		}
	}
	if !cfg.Broker.UsesTLS() {
		logger.Warn("share: the cluster broker url is not TLS; contributions travel in plain text", "url", cfg.Broker.URL)
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	s.q, err = queue.Open(queue.Options{Dir: filepath.Join(dir, "queue"), SegmentBytes: 1 << 20,
		MaxBytes: max(int64(cfg.QueueMaxBytes), 2<<20), Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("share: queue: %w", err)
	}
	logger.Info("share: sharing KPIs with the cluster", "pseudonym", s.pseudonym, "broker", cfg.Broker.URL,
		"classes", len(cfg.Classes), "log", filepath.Join(dir, LogFile))
	return s, nil
}

// Stats describe the sharer's traffic, for metrics and the status page.
type Stats struct {
	Queued       int64 // contributions waiting to be sent
	Sent         int64 // contributions the broker acknowledged since start
	SendFailures int64 // failed connection or publish attempts since start
}

// Stats reports the sharer's traffic.
func (s *Sharer) Stats() Stats {
	return Stats{Queued: s.q.Stats().Records, Sent: s.sent.Load(), SendFailures: s.failures.Load()}
}

// Pseudonym is the firm's contributor id.
func (s *Sharer) Pseudonym() string { return s.pseudonym }

func assetKey(a collector.Asset) string {
	return a.Site + "\x00" + a.Area + "\x00" + a.Line + "\x00" + a.Machine
}

// Observe takes the KPI engine's output. It keeps the latest hour row of
// every machine with a class, and the latest closed minute, which says
// when the hour row is final. Line and site roll-ups are ignored. It does
// not block: the engine calls it under its lock.
func (s *Sharer) Observe(rows []collector.Sample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range rows {
		r := &rows[i]
		if r.Asset.Machine == "" || (r.Window != windowHour && r.Window != windowMinute) {
			continue
		}
		class, ok := s.cfg.Classes[r.Asset.Machine]
		if !ok {
			continue
		}
		key := assetKey(r.Asset)
		start := r.SourceTime.UTC()
		if r.Window == windowMinute {
			if start.After(s.lastMinute[key]) {
				s.lastMinute[key] = start
				s.dirty = true
			}
			continue
		}
		p := s.periods[start.Unix()]
		if p == nil {
			p = &period{Start: start, Machines: map[string]*machineRow{}}
			s.periods[start.Unix()] = p
		}
		m := p.Machines[key]
		// The engine writes a row's fields in a fixed order starting with
		// planned_s; a field it left out this time (oee while there are
		// no parts yet) must not keep an older value.
		if m == nil || r.Signal == "planned_s" {
			m = &machineRow{Class: class, KPIs: map[string]float64{}}
			p.Machines[key] = m
		}
		switch r.Signal {
		case "performance_suspect":
			m.Suspect, _ = r.Value.AsBool()
		case KPIOEE, KPIAvailability, KPIPerformance, KPIQuality, KPIMTBF, KPIMTTR, KPIEnergyPerGoodPart:
			if v, ok := r.Value.AsFloat(); ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
				m.KPIs[r.Signal] = v
			}
		}
		s.dirty = true
	}
}

// Run sends queued contributions and queues new ones as periods become
// ready, until ctx is done. It then saves its state and returns; what was
// not sent stays queued for the next start.
func (s *Sharer) Run(ctx context.Context) error {
	fwdDone := make(chan struct{})
	go func() {
		defer close(fwdDone)
		s.forward(ctx)
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			<-fwdDone
			s.pub.Close()
			return s.Save()
		case <-t.C:
			if err := s.check(); err != nil {
				s.log.Error("share: cannot queue a contribution", "err", err)
			}
			if err := s.Save(); err != nil {
				s.log.Error("share: cannot save state", "err", err)
			}
		}
	}
}

// Close queues what became ready since Run stopped (the pipeline drains
// after it), saves the state and closes the queue. Call it once, after
// Run returned and no more rows come.
func (s *Sharer) Close() error {
	// The pipeline has stopped by now; the local copy of what becomes
	// ready here is written after the next start.
	err := s.checkAndCopy(false)
	err = errors.Join(err, s.Save())
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return errors.Join(err, s.q.Close())
}

// ready builds the contributions that are due now and were not queued
// yet in that form: a period is due settle after its end once every
// machine of the class has its hour final.
func (s *Sharer) ready(now time.Time, copyLocal bool) []Contribution {
	var out []Contribution
	starts := make([]int64, 0, len(s.periods))
	for k := range s.periods {
		starts = append(starts, k)
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	for _, k := range starts {
		p := s.periods[k]
		end := p.Start.Add(time.Hour)
		if now.After(end.Add(keepPeriods)) {
			delete(s.periods, k)
			s.dirty = true
			continue
		}
		if now.Before(end.Add(s.cfg.Settle)) {
			continue
		}
		byClass := map[string][]string{}
		for key, m := range p.Machines {
			byClass[m.Class] = append(byClass[m.Class], key)
		}
		for class, keys := range byClass {
			var waiting []string
			for _, key := range keys {
				// The hour row is final once the engine closed the
				// hour's last minute: it is emitted right after it.
				if s.lastMinute[key].Before(end.Add(-time.Minute)) {
					waiting = append(waiting, key)
				}
			}
			if len(waiting) > 0 && now.Before(end.Add(s.cfg.Settle+s.cfg.MaxWait)) {
				continue
			}
			c, ok := s.contribution(p, class, keys)
			if !ok {
				continue
			}
			payload, _ := json.Marshal(c)
			if p.Sent[class] == string(payload) && (!copyLocal || p.Local[class] == string(payload)) {
				continue
			}
			if len(waiting) > 0 && p.Sent[class] != string(payload) {
				s.log.Warn("share: sending a contribution although some machines' hour never became final", "class", class, "period_start", p.Start, "machines_waiting", len(waiting))
			}
			out = append(out, c)
		}
	}
	return out
}

// contribution is the mean of the machines' KPIs. Ratios are rounded to
// four decimals and times and energy to a tenth: more digits describe no
// machine better, and fewer make a contribution harder to fingerprint.
func (s *Sharer) contribution(p *period, class string, keys []string) (Contribution, bool) {
	sums, counts := map[string]float64{}, map[string]int{}
	for _, key := range keys {
		m := p.Machines[key]
		for k, v := range m.KPIs {
			// A performance above 1 means a wrong ideal cycle time, and
			// would spoil the cluster's figures.
			if m.Suspect && (k == KPIPerformance || k == KPIOEE) {
				continue
			}
			sums[k] += v
			counts[k]++
		}
	}
	c := Contribution{Version: Version, Contributor: s.pseudonym, Class: class, Period: s.cfg.Period,
		Start: p.Start.UTC(), Machines: len(keys), KPIs: map[string]float64{}}
	for k, sum := range sums {
		c.KPIs[k] = Round(k, sum/float64(counts[k]))
	}
	return c, len(c.KPIs) > 0
}

// Round rounds a KPI value the way contributions carry it.
func Round(kpi string, v float64) float64 {
	if IsRatio(kpi) {
		return math.Round(v*1e4) / 1e4
	}
	return math.Round(v*10) / 10
}

// LogFile is the local record of every contribution, in the share
// directory: one JSON line per contribution with the topic and the exact
// payload.
const LogFile = "contributions.jsonl"

// check queues the contributions that are ready.
func (s *Sharer) check() error { return s.checkAndCopy(s.local != nil) }

// checkAndCopy queues what is ready and, with copyLocal, writes it to the
// firm's own store.
func (s *Sharer) checkAndCopy(copyLocal bool) error {
	var local []Contribution
	err := s.queueReady(copyLocal, &local)
	if len(local) == 0 {
		return err
	}
	var rows []collector.Sample
	for _, c := range local {
		rows = append(rows, LocalRows(c)...)
	}
	// Outside the lock: emit is the pipeline, which must never wait for
	// the KPI engine's lock while the engine waits for ours.
	if lerr := s.local(rows); lerr != nil {
		return errors.Join(err, fmt.Errorf("share: local copy: %w", lerr))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range local {
		if p := s.periods[c.Start.Unix()]; p != nil {
			if p.Local == nil {
				p.Local = map[string]string{}
			}
			payload, _ := json.Marshal(c)
			p.Local[c.Class] = string(payload)
			s.dirty = true
		}
	}
	return err
}

// queueReady queues the contributions that are ready and, with copyLocal,
// appends to local those the firm's own store does not have yet.
func (s *Sharer) queueReady(copyLocal bool, local *[]Contribution) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	var errs []error
	for _, c := range s.ready(s.now(), copyLocal) {
		payload, err := json.Marshal(c)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p := s.periods[c.Start.Unix()]
		if copyLocal && p.Local[c.Class] != string(payload) {
			*local = append(*local, c)
		}
		if p.Sent[c.Class] == string(payload) {
			continue
		}
		topic := Topic(s.cfg.TopicPrefix, s.pseudonym, c.Class)
		if err := s.logLocally(topic, payload); err != nil {
			// Not sending is better than sending what the firm cannot
			// see it sent.
			errs = append(errs, err)
			continue
		}
		if err := s.q.Append(record(topic, payload), 1); err != nil {
			errs = append(errs, fmt.Errorf("share: queue: %w", err))
			continue
		}
		if p.Sent == nil {
			p.Sent = map[string]string{}
		}
		p.Sent[c.Class] = string(payload)
		s.dirty = true
		s.log.Info("share: contribution queued", "topic", topic, "payload", string(payload))
	}
	return errors.Join(errs...)
}

func (s *Sharer) logLocally(topic string, payload []byte) error {
	line, err := json.Marshal(struct {
		Queued  time.Time       `json:"queued"`
		Topic   string          `json:"topic"`
		Payload json.RawMessage `json:"payload"`
	}{s.now().UTC().Truncate(time.Second), topic, payload})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(s.dir, LogFile), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("share: local log: %w", err)
	}
	_, err = f.Write(append(line, '\n'))
	return errors.Join(err, f.Close())
}

// record is a queue record: the topic, a newline, the payload.
func record(topic string, payload []byte) []byte {
	return append([]byte(topic+"\n"), payload...)
}

func splitRecord(b []byte) (string, []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return "", nil
	}
	return string(b[:i]), b[i+1:]
}

// forward publishes queued contributions in order, each acknowledged in
// the queue only after the broker acknowledged it.
func (s *Sharer) forward(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = time.Second, time.Minute
	var recs []queue.Record
	for ctx.Err() == nil {
		var err error
		recs, err = s.q.Read(recs[:0], 16)
		if err == nil && len(recs) == 0 {
			select {
			case <-ctx.Done():
			case <-s.q.Notify():
			case <-time.After(5 * time.Second):
			}
			continue
		}
		for i := 0; err == nil && i < len(recs); i++ {
			topic, payload := splitRecord(recs[i].Data)
			if topic == "" {
				s.log.Error("share: dropping a damaged queue record")
			} else if err = s.pub.Publish(ctx, topic, payload); err != nil {
				break
			} else {
				s.sent.Add(1)
			}
			err = s.q.Ack(recs[i : i+1])
		}
		if err == nil {
			bo.Reset()
			continue
		}
		s.q.Rewind()
		s.failures.Add(1)
		wait := bo.NextBackOff()
		if ctx.Err() == nil {
			s.log.Warn("share: cannot send to the cluster broker; contributions stay queued", "err", err, "retry_in", wait.Round(time.Second), "queued", s.q.Stats().Records)
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// Save writes the collected rows atomically, so a restart does not lose
// an hour whose last row came just before it.
func (s *Sharer) Save() error {
	s.mu.Lock()
	if !s.dirty {
		s.mu.Unlock()
		return nil
	}
	st := savedState{Version: 1, LastMinute: s.lastMinute}
	for _, p := range s.periods {
		st.Periods = append(st.Periods, p)
	}
	b, err := json.Marshal(st)
	s.dirty = false
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("share: save: %w", err)
	}
	return writeState(filepath.Join(s.dir, "state.json"), b)
}

func (s *Sharer) load() error {
	path := filepath.Join(s.dir, "state.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("share: read state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil || st.Version != 1 {
		// Starting fresh costs at most the current hour's contribution.
		s.log.Error("share: the saved state is unreadable; starting fresh", "file", path, "err", err)
		return nil
	}
	for _, p := range st.Periods {
		if p.Machines == nil {
			p.Machines = map[string]*machineRow{}
		}
		s.periods[p.Start.Unix()] = p
	}
	if st.LastMinute != nil {
		s.lastMinute = st.LastMinute
	}
	return nil
}

// writeState replaces path with b atomically, synced before the rename.
func writeState(path string, b []byte) error {
	if err := renameio.WriteFile(path, b, 0o640); err != nil {
		return fmt.Errorf("share: save: %w", err)
	}
	return nil
}
