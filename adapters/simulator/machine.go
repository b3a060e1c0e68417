// Package simulator provides simulated CNC machines and robots that behave
// like real ones — state machines with realistic durations, part counters,
// spindle, power and energy consistent with the state — for the demo, for
// tests, and for firms that want to see shopfloor work before connecting a
// machine. A machine is deterministic: the same seed and start time give
// the same values for the same sequence of Advance calls, so a fleet that
// samples at a fixed simulated interval is reproducible whatever its time
// factor.
package simulator

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Kind is the type of a simulated machine.
type Kind string

// Machine kinds.
const (
	KindCNC   Kind = "cnc"
	KindRobot Kind = "robot"
)

// Program is a part program with its ideal cycle time.
type Program struct {
	Name  string
	Cycle time.Duration
}

// CNCPrograms are the programs a simulated CNC runs.
var CNCPrograms = []Program{{"O1001", 45 * time.Second}, {"O2040", 90 * time.Second}, {"O3100", 150 * time.Second}}

// Alarm is an alarm a machine can raise.
type Alarm struct {
	Code, Text string
}

var cncAlarms = []Alarm{{"1010", "Spindle overload"}, {"2031", "Tool breakage detected"}, {"3005", "Coolant level low"}, {"4100", "Door interlock open"}}
var robotAlarms = []Alarm{{"SRVO-050", "Collision detection"}, {"SRVO-062", "Battery low"}, {"INTP-105", "Gripper timeout"}}

// Values is the state of a machine at one moment, with the names the
// simulator publishes (the variable names of deploy/examples/opcua.yaml).
type Values struct {
	Time            time.Time
	State           string
	Program         string
	PartCountGood   int64
	PartCountReject int64
	CycleCount      int64
	LastCycleTime   float64 // s
	SpindleSpeed    float64 // rpm
	SpindleLoad     float64 // %
	FeedOverride    float64 // %
	PowerActive     float64 // W
	EnergyTotal     float64 // Wh
	Temperature     float64 // °C
	AlarmCode       string
	AlarmText       string
	TcpSpeed        float64    // mm/s
	Payload         float64    // kg
	JointTorques    [6]float64 // Nm
}

// Machine is one simulated machine. It is not safe for concurrent use.
type Machine struct {
	Name string
	Kind Kind
	rng  *rand.Rand
	now  time.Time
	v    Values
	// stateUntil is when the current state ends; cycleAt when the running
	// part is done.
	stateUntil, cycleAt time.Time
	program             Program
	alarm               Alarm
}

// NewMachine makes a machine that starts at start in a state drawn from
// seed.
func NewMachine(name string, kind Kind, seed uint64, start time.Time) *Machine {
	m := &Machine{Name: name, Kind: kind, rng: rand.New(rand.NewPCG(seed, uint64(len(name))*7919+1)), now: start}
	m.program = CNCPrograms[m.rng.IntN(len(CNCPrograms))]
	if kind == KindRobot {
		m.program = Program{"PICK_PLACE", time.Duration(20+m.rng.IntN(20)) * time.Second}
	}
	m.v = Values{Time: start, Program: m.program.Name, FeedOverride: 100, Temperature: 24}
	m.enter("running")
	return m
}

// state durations, means in minutes: long runs, short idles, rare alarms.
var meanMinutes = map[string]float64{"running": 40, "idle": 6, "setup": 12, "alarm": 5, "maintenance": 30}

func (m *Machine) exp(mean float64) time.Duration {
	return time.Duration((0.3 + m.rng.ExpFloat64()*0.7) * mean * float64(time.Minute))
}

func (m *Machine) enter(state string) {
	m.v.State = state
	m.stateUntil = m.now.Add(m.exp(meanMinutes[state]))
	m.v.AlarmCode, m.v.AlarmText = "", ""
	switch state {
	case "running":
		m.cycleAt = m.now.Add(m.cycleTime())
	case "alarm":
		alarms := cncAlarms
		if m.Kind == KindRobot {
			alarms = robotAlarms
		}
		m.alarm = alarms[m.rng.IntN(len(alarms))]
		m.v.AlarmCode, m.v.AlarmText = m.alarm.Code, m.alarm.Text
	case "setup":
		if m.Kind == KindCNC {
			m.program = CNCPrograms[m.rng.IntN(len(CNCPrograms))]
			m.v.Program = m.program.Name
		}
	}
}

// next picks the state after the current one ends.
func (m *Machine) next() string {
	r := m.rng.Float64()
	switch m.v.State {
	case "running":
		switch {
		case r < 0.45:
			return "idle"
		case r < 0.75:
			return "alarm"
		case r < 0.95 && m.Kind == KindCNC:
			return "setup"
		default:
			return "maintenance"
		}
	default:
		return "running"
	}
}

// cycleTime is the actual time of one part: the ideal one slowed by the
// feed override and some noise.
func (m *Machine) cycleTime() time.Duration {
	f := 1.05 + 0.15*m.rng.Float64()
	return time.Duration(float64(m.program.Cycle) * f * 100 / math.Max(m.v.FeedOverride, 50))
}

// Advance moves the machine to t, in steps of at most a second, and
// returns its values then.
func (m *Machine) Advance(t time.Time) Values {
	for m.now.Before(t) {
		step := min(time.Second, t.Sub(m.now))
		m.step(step)
	}
	m.v.Time = m.now
	return m.v
}

func (m *Machine) step(dt time.Duration) {
	m.now = m.now.Add(dt)
	if !m.now.Before(m.stateUntil) {
		m.enter(m.next())
	}
	running := m.v.State == "running"
	if running && !m.now.Before(m.cycleAt) {
		m.v.CycleCount++
		m.v.LastCycleTime = m.cycleTime().Seconds()
		if m.Kind == KindCNC {
			if m.rng.Float64() < 0.03 {
				m.v.PartCountReject++
			} else {
				m.v.PartCountGood++
			}
		} else {
			m.v.PartCountGood++
		}
		m.cycleAt = m.now.Add(m.cycleTime())
		if m.rng.Float64() < 0.02 {
			m.v.FeedOverride = float64(80 + 10*m.rng.IntN(5))
		}
	}
	noise := func(scale float64) float64 { return m.rng.NormFloat64() * scale }
	switch m.Kind {
	case KindCNC:
		if running {
			m.v.SpindleSpeed = math.Max(0, 12000*m.v.FeedOverride/100+noise(60))
			m.v.SpindleLoad = math.Min(100, math.Max(0, 45+noise(6)))
			m.v.PowerActive = 5200 + 60*m.v.SpindleLoad + noise(150)
		} else {
			m.v.SpindleSpeed, m.v.SpindleLoad = 0, 0
			m.v.PowerActive = map[string]float64{"idle": 1400, "setup": 1100, "alarm": 900, "maintenance": 300}[m.v.State] + noise(30)
		}
		target := 24.0
		if running {
			target = 38
		}
		m.v.Temperature += (target - m.v.Temperature) * dt.Seconds() / 600
	case KindRobot:
		if running {
			m.v.TcpSpeed = math.Max(0, 850+noise(120))
			m.v.Payload = 4.2 + noise(0.05)
			for i := range m.v.JointTorques {
				m.v.JointTorques[i] = []float64{120, 180, 95, 30, 22, 8}[i] * (0.8 + 0.4*m.rng.Float64())
			}
			m.v.PowerActive = 2800 + noise(200)
		} else {
			m.v.TcpSpeed, m.v.Payload = 0, 0
			for i := range m.v.JointTorques {
				m.v.JointTorques[i] = []float64{60, 90, 40, 10, 5, 2}[i] // holding torque
			}
			m.v.PowerActive = map[string]float64{"idle": 600, "alarm": 450, "maintenance": 100}[m.v.State] + noise(10)
		}
	}
	m.v.PowerActive = math.Max(0, m.v.PowerActive)
	m.v.EnergyTotal += m.v.PowerActive * dt.Hours()
}

// JSON renders values as the flat JSON of deploy/examples/mqtt-json.yaml.
func (v Values) JSON(kind Kind) []byte {
	ts := v.Time.UnixMilli()
	if kind == KindRobot {
		return fmt.Appendf(nil, `{"ts":%d,"machine_type":"robot","state":%q,"cycle_count":%d,"tcp_speed":%.1f,"payload":%.2f,"joint_torque_1":%.1f,"joint_torque_2":%.1f,"joint_torque_3":%.1f,"joint_torque_4":%.1f,"joint_torque_5":%.1f,"joint_torque_6":%.1f,"power_w":%.1f,"energy_wh":%.3f,"part_count":%d,"alarm_code":%q,"program":%q}`,
			ts, v.State, v.CycleCount, v.TcpSpeed, v.Payload, v.JointTorques[0], v.JointTorques[1], v.JointTorques[2], v.JointTorques[3], v.JointTorques[4], v.JointTorques[5],
			v.PowerActive, v.EnergyTotal, v.PartCountGood, v.AlarmCode, v.Program)
	}
	return fmt.Appendf(nil, `{"ts":%d,"machine_type":"cnc","state":%q,"program":%q,"part_count":%d,"reject_count":%d,"spindle_speed":%.0f,"spindle_load":%.1f,"feed_override":%.0f,"power_w":%.1f,"energy_wh":%.3f,"temperature":%.2f,"cycle_time":%.2f,"alarm_code":%q,"alarm_text":%q}`,
		ts, v.State, v.Program, v.PartCountGood, v.PartCountReject, v.SpindleSpeed, v.SpindleLoad, v.FeedOverride, v.PowerActive, v.EnergyTotal, v.Temperature, v.LastCycleTime, v.AlarmCode, v.AlarmText)
}
