// Package live keeps what the agent's status page shows of each machine:
// the last value of every signal with its time, and the machine's state
// changes of the last hours. It sees the normalised samples as the queue
// takes them and holds a bounded amount per machine.
package live

import (
	"hash/maphash"
	"sort"
	"sync"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
)

// Bounds on what is kept, so a machine with ever new signal names or a
// flapping state cannot grow the agent.
const (
	maxSignals       = 200
	maxStateChanges  = 2000
	stateHistoryTime = 24 * time.Hour
)

// Value is the last value of one signal.
type Value struct {
	Value   collector.Value
	Unit    string
	Quality collector.Quality
	Time    time.Time // source time
	Seen    time.Time // when the agent got it
}

// StateChange is the machine entering a state.
type StateChange struct {
	State string    `json:"state"`
	Time  time.Time `json:"time"`
}

// Machine is the live view of one machine.
type Machine struct {
	Asset       collector.Asset
	MachineType string
	Source      string
	Values      map[string]Value
	States      []StateChange // oldest first
	LastSeen    time.Time
}

// View is the live view of every machine. It is safe for concurrent use.
//
// Machines are spread over shards, each with its own lock: with one lock
// for the whole view, sources emitting at once waited on each other here
// (a third of all lock waiting in BenchmarkSourcesInParallel).
type View struct {
	shards [viewShards]viewShard
	seed   maphash.Seed
	now    func() time.Time
}

const viewShards = 16

type viewShard struct {
	mu       sync.Mutex
	machines map[collector.Asset]*machine
}

// shard is where the machine of asset a is kept.
func (v *View) shard(a collector.Asset) *viewShard {
	return &v.shards[maphash.Comparable(v.seed, a)%viewShards]
}

// machine is a Machine as the view keeps it: values by pointer, so that
// a sample costs one map lookup, not a lookup and a store.
type machine struct {
	Machine
	values map[string]*Value
}

// New returns an empty view.
func New() *View {
	v := &View{seed: maphash.MakeSeed(), now: time.Now}
	for i := range v.shards {
		v.shards[i].machines = map[collector.Asset]*machine{}
	}
	return v
}

// Observe takes the normalised samples of one message of source.
func (v *View) Observe(source string, samples []collector.Sample) {
	now := v.now()
	var (
		m  *machine   // the machine of the previous sample: a message's samples share one
		sh *viewShard // the shard locked, m's
	)
	defer func() {
		if sh != nil {
			sh.mu.Unlock()
		}
	}()
	for i := range samples {
		s := &samples[i]
		if s.Window != "" || s.Asset.Machine == "" {
			continue
		}
		if m == nil || m.Asset != s.Asset {
			if next := v.shard(s.Asset); next != sh {
				if sh != nil {
					sh.mu.Unlock()
				}
				sh = next
				sh.mu.Lock()
			}
			m = sh.machines[s.Asset]
			if m == nil {
				m = &machine{Machine: Machine{Asset: s.Asset}, values: map[string]*Value{}}
				sh.machines[s.Asset] = m
			}
			m.Source, m.LastSeen = source, now
		}
		if s.MachineType != "" {
			m.MachineType = s.MachineType
		}
		t := s.SourceTime
		if t.IsZero() {
			t = s.ReceiveTime
		}
		val := m.values[s.Signal]
		if val != nil && val.Time.After(t) {
			continue // an older sample arriving late does not replace the last
		}
		if val == nil && len(m.values) < maxSignals {
			val = new(Value)
			m.values[s.Signal] = val
		}
		if val != nil {
			*val = Value{Value: s.Value, Unit: s.Unit, Quality: s.Quality, Time: t, Seen: now}
		}
		if s.Signal == collector.SignalState {
			state := s.Value.Str()
			if s.Quality == collector.QualityBad {
				state = collector.StateOffline
			}
			n := len(m.States)
			if n == 0 || m.States[n-1].State != state && !t.Before(m.States[n-1].Time) {
				m.States = append(m.States, StateChange{State: state, Time: t})
			}
			cut := 0
			for cut < len(m.States)-1 && (len(m.States)-cut > maxStateChanges || t.Sub(m.States[cut+1].Time) > stateHistoryTime) {
				cut++
			}
			m.States = m.States[cut:]
		}
	}
}

// Machines returns copies of every machine's view, ordered by site, line
// and machine.
func (v *View) Machines() []Machine {
	var out []Machine
	for i := range v.shards {
		out = v.shards[i].appendMachines(out)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Asset, out[j].Asset
		if a.Site != b.Site {
			return a.Site < b.Site
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Machine < b.Machine
	})
	return out
}

// appendMachines appends copies of the shard's machines.
func (sh *viewShard) appendMachines(out []Machine) []Machine {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, m := range sh.machines {
		c := m.Machine
		c.Values = make(map[string]Value, len(m.values))
		for k, val := range m.values {
			c.Values[k] = *val
		}
		c.States = append([]StateChange(nil), m.States...)
		out = append(out, c)
	}
	return out
}
