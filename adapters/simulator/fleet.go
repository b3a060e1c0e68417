package simulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

// Config describes a simulated shop floor.
type Config struct {
	// CNCs and Robots are how many machines of each kind there are. They
	// are spread over Lines lines: cnc-01 and robot-01 on line-1, ...
	CNCs   int `yaml:"cncs"`
	Robots int `yaml:"robots"`
	Lines  int `yaml:"lines"`
	// Seed makes the run reproducible: the same seed, start and interval
	// give the same values whatever the time factor.
	Seed uint64 `yaml:"seed"`
	// Start is the simulated time of the first sample; zero means now.
	Start time.Time `yaml:"-"`
	// TimeFactor runs simulated time this much faster than the wall
	// clock: 60 lets a shift pass in eight minutes.
	TimeFactor float64 `yaml:"time_factor"`
	// Interval is the simulated time between two samples of a machine.
	Interval time.Duration `yaml:"interval"`
}

// SetDefaults fills unset values.
func (c *Config) SetDefaults() {
	if c.CNCs == 0 && c.Robots == 0 {
		c.CNCs, c.Robots = 4, 2
	}
	if c.Lines == 0 {
		c.Lines = 2
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.TimeFactor == 0 {
		c.TimeFactor = 1
	}
	if c.Interval == 0 {
		c.Interval = time.Second
	}
}

// Validate reports every problem.
func (c Config) Validate() error {
	var errs []error
	if c.CNCs < 0 || c.Robots < 0 || c.CNCs+c.Robots > 10000 {
		errs = append(errs, config.Invalid("cncs", "cncs and robots must be between 0 and 10000 together"))
	}
	if c.Lines < 1 {
		errs = append(errs, config.Invalid("lines", "must be at least 1"))
	}
	if c.TimeFactor <= 0 || c.TimeFactor > 10000 {
		errs = append(errs, config.Invalid("time_factor", "must be above 0 and at most 10000"))
	}
	if c.Interval < 10*time.Millisecond {
		errs = append(errs, config.Invalid("interval", "must be at least 10ms"))
	}
	return errors.Join(errs...)
}

// Placed is a machine with its place on the floor.
type Placed struct {
	*Machine
	Line string
}

// Publisher sends the values of a machine somewhere: MQTT, an OPC UA
// address space.
type Publisher interface {
	Publish(ctx context.Context, m Placed, v Values) error
}

// Fleet is a simulated shop floor.
type Fleet struct {
	cfg      Config
	Machines []Placed
	log      *slog.Logger
}

// NewFleet builds the machines of cfg.
func NewFleet(cfg Config, logger *slog.Logger) (*Fleet, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Start.IsZero() {
		cfg.Start = time.Now().Truncate(time.Second)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{cfg: cfg, log: logger}
	add := func(kind Kind, n int) {
		for i := 1; i <= n; i++ {
			name := fmt.Sprintf("%s-%02d", kind, i)
			line := fmt.Sprintf("line-%d", (i-1)%cfg.Lines+1)
			seed := cfg.Seed*1000003 + uint64(len(f.Machines))
			f.Machines = append(f.Machines, Placed{NewMachine(name, kind, seed, cfg.Start), line})
		}
	}
	add(KindCNC, cfg.CNCs)
	add(KindRobot, cfg.Robots)
	return f, nil
}

// TimeFactor is how much faster than the wall clock the fleet runs.
func (f *Fleet) TimeFactor() float64 { return f.cfg.TimeFactor }

// Run advances the machines by Interval of simulated time every
// Interval/TimeFactor of wall time and hands each machine's values to
// every publisher, until ctx is done. A publisher's error is logged and
// the run goes on: a simulator outlives a restarting broker.
func (f *Fleet) Run(ctx context.Context, pubs ...Publisher) error {
	wall := time.Duration(float64(f.cfg.Interval) / f.cfg.TimeFactor)
	t := time.NewTicker(max(wall, time.Millisecond))
	defer t.Stop()
	sim := f.cfg.Start
	lastErr := map[int]time.Time{}
	for {
		for _, m := range f.Machines {
			v := m.Advance(sim)
			for i, p := range pubs {
				if err := p.Publish(ctx, m, v); err != nil && ctx.Err() == nil {
					if time.Since(lastErr[i]) > 10*time.Second {
						f.log.Warn("simulator: publish failed; retrying with the next sample", "machine", m.Name, "err", err)
						lastErr[i] = time.Now()
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			sim = sim.Add(f.cfg.Interval)
		}
	}
}

// Only passes to p the machines keep selects, so different transports can
// serve different machines.
func Only(p Publisher, keep func(Placed) bool) Publisher { return only{p, keep} }

type only struct {
	p    Publisher
	keep func(Placed) bool
}

func (o only) Publish(ctx context.Context, m Placed, v Values) error {
	if !o.keep(m) {
		return nil
	}
	return o.p.Publish(ctx, m, v)
}
