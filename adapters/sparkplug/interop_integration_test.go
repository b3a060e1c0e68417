//go:build integration

package sparkplug

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// TestInteropEdgeNode drives the host with an edge node we did not write
// (npm sparkplug-payload over MQTT.js) through real Mosquitto: host STATE,
// births, data by alias of every datatype, a malformed payload, a skipped
// seq that must produce a rebirth request on the broker, historical data,
// a device death and a node death by will.
func TestInteropEdgeNode(t *testing.T) {
	broker := collectortest.Mosquitto(t)
	url := broker.URL()
	watcher := watchState(t, url, "shopfloor")
	host := newHost(t, Config{URL: url, HostID: "shopfloor", ReorderTimeout: 300 * time.Millisecond, RebirthMinInterval: 100 * time.Millisecond})
	out := &collectortest.Output{}
	run := collectortest.Start(t, host, out)
	collectortest.WaitConnected(t, out, 1)

	var birthTS int64
	t.Run("host STATE online", func(t *testing.T) {
		collectortest.Eventually(t, 10*time.Second, func() error {
			if st, ok := watcher.last(); !ok || !st.Online {
				return fmt.Errorf("STATE %+v, want online", st)
			}
			return nil
		})
		st := retainedState(t, url, "shopfloor")
		if !st.Online || st.Timestamp == 0 {
			t.Fatalf("retained STATE %+v, want online with a timestamp", st)
		}
		birthTS = st.Timestamp
	})

	edge := startEdgeNode(t)
	edge.do(m{"cmd": "connect", "url": url, "group": "plant", "node": "line1", "bdSeq": 3})
	edge.do(m{"cmd": "birth", "device": nil, "metrics": []m{{"name": "Uptime", "alias": 100, "type": "Int64", "value": 42}}})
	edge.do(m{"cmd": "birth", "device": "mill-1", "metrics": everyType(t)})

	t.Run("births of every datatype", func(t *testing.T) {
		waitValues(t, out, "plant/line1/mill-1", "ADT/0", 1)
		for name, want := range wantEveryType {
			if got := values(out, "plant/line1/mill-1", name); !slices.Equal(got, []collector.Value{want}) {
				t.Errorf("%s = %#v, want %#v", name, got, want)
			}
		}
		if got := values(out, "plant/line1", "Uptime"); !slices.Equal(got, []collector.Value{collector.Int(42)}) {
			t.Errorf("node metric Uptime = %v", got)
		}
		if got := out.BadCounts(); got[ReasonUnsupportedType] != 1 {
			t.Errorf("bad %v, want one unsupported_type for the Bytes metric", got)
		}
		for _, s := range out.Samples() {
			if s.Signal == "Temperature" && s.Unit != "°C" {
				t.Errorf("Temperature unit %q, want the engUnit property °C", s.Unit)
			}
			if isProtocol(s.Signal) || s.Signal == "Blob" {
				t.Errorf("sample %s emitted", s.Signal)
			}
		}
	})

	t.Run("data by alias, signed values", func(t *testing.T) {
		edge.do(m{"cmd": "data", "device": "mill-1", "metrics": []m{
			{"alias": 1, "type": "Int8", "value": -128},
			{"alias": 2, "type": "Int16", "value": -32768},
			{"alias": 3, "type": "Int32", "value": -2147483648},
			{"alias": 4, "type": "Int64", "value": "-9223372036854775808"},
			{"alias": 9, "type": "Float", "value": -40.5},
			{"alias": 12, "type": "String", "value": "O5678"},
		}})
		waitValues(t, out, "plant/line1/mill-1", "Program", 2)
		want := map[string]collector.Value{"I8": collector.Int(-128), "I16": collector.Int(-32768), "I32": collector.Int(math.MinInt32), "I64": collector.Int(math.MinInt64), "Temperature": collector.Float(-40.5), "Program": collector.String("O5678")}
		for name, w := range want {
			got := values(out, "plant/line1/mill-1", name)
			if len(got) != 2 || got[1] != w {
				t.Errorf("%s = %#v, want %#v last", name, got, w)
			}
		}
	})

	t.Run("malformed payload counted, host unaffected", func(t *testing.T) {
		edge.do(m{"cmd": "raw", "topic": "spBv1.0/plant/DDATA/line1/mill-1", "hex": "0aff01deadbeef"})
		collectortest.Eventually(t, 10*time.Second, func() error {
			if n := out.BadCounts()[ReasonInvalidProtobuf]; n != 1 {
				return fmt.Errorf("invalid_protobuf %d, want 1", n)
			}
			return nil
		})
		edge.do(m{"cmd": "data", "device": "mill-1", "metrics": []m{{"alias": 12, "type": "String", "value": "after-garbage"}}})
		if got := waitValues(t, out, "plant/line1/mill-1", "Program", 3); got[2] != collector.String("after-garbage") {
			t.Errorf("Program = %v", got)
		}
	})

	t.Run("historical data keeps its timestamp", func(t *testing.T) {
		edge.do(m{"cmd": "data", "device": "mill-1", "metrics": []m{
			{"alias": 5, "type": "UInt8", "value": 1, "timestamp": "1764400000000", "isHistorical": true},
			{"alias": 5, "type": "UInt8", "value": 2},
		}})
		waitValues(t, out, "plant/line1/mill-1", "U8", 3)
		var hist, live collector.Sample
		for _, s := range out.Samples() {
			if s.Signal == "U8" {
				hist, live = live, s
			}
		}
		if !hist.SourceTime.Equal(time.UnixMilli(1764400000000)) || !live.SourceTime.After(hist.SourceTime) || live.Value != collector.Int(2) {
			t.Errorf("historical %v at %v, live %v at %v", hist.Value, hist.SourceTime, live.Value, live.SourceTime)
		}
	})

	t.Run("skipped seq requests a rebirth", func(t *testing.T) {
		before := edge.rebirthRequests()
		edge.do(m{"cmd": "skip", "n": 1})
		edge.do(m{"cmd": "data", "device": "mill-1", "metrics": []m{{"alias": 12, "type": "String", "value": "after-gap"}}})
		collectortest.Eventually(t, 10*time.Second, func() error {
			if n := edge.rebirthRequests(); n <= before {
				return fmt.Errorf("%d rebirth requests seen by the edge node, want more than %d", n, before)
			}
			return nil
		})
		if out.BadCounts()[ReasonSeqGap] != 1 {
			t.Errorf("bad %v, want one seq_gap", out.BadCounts())
		}
		// The data after the gap is kept.
		if got := waitValues(t, out, "plant/line1/mill-1", "Program", 4); got[3] != collector.String("after-gap") {
			t.Errorf("Program = %v", got)
		}
	})

	t.Run("DDEATH marks the device offline", func(t *testing.T) {
		edge.do(m{"cmd": "birth", "device": "robot-1", "metrics": []m{{"name": "Payload", "alias": 1, "type": "Double", "value": 2.5}}})
		waitValues(t, out, "plant/line1/robot-1", "Payload", 1)
		edge.do(m{"cmd": "ddeath", "device": "robot-1"})
		if got := waitValues(t, out, "plant/line1/robot-1", "state", 1); got[0] != collector.String(collector.StateOffline) {
			t.Errorf("state %v", got)
		}
	})

	t.Run("NDEATH marks the machines offline", func(t *testing.T) {
		killed := time.Now()
		edge.do(m{"cmd": "kill"})
		for _, orig := range []string{"plant/line1/mill-1", "plant/line1"} {
			got := waitValues(t, out, orig, "state", 1)
			if got[0] != collector.String(collector.StateOffline) {
				t.Errorf("%s state %v", orig, got)
			}
		}
		for _, b := range out.Batches() {
			for _, s := range b.Samples {
				if s.Signal == "state" && b.Origin != "plant/line1/robot-1" && s.SourceTime.Before(killed) {
					t.Errorf("%s offline stamped %v, before the death was received", b.Origin, s.SourceTime)
				}
			}
		}
		// Stale: the metrics of the dead device lose their quality.
		temps := values(out, "plant/line1/mill-1", "Temperature")
		if last := temps[len(temps)-1]; last.Kind() != collector.KindNone {
			t.Errorf("Temperature after death = %v, want a valueless stale sample", last)
		}
		if got := values(out, "plant/line1/robot-1", "state"); len(got) != 1 {
			t.Errorf("the dead device robot-1 went offline again: %v", got)
		}
	})

	t.Run("host STATE death on clean stop", func(t *testing.T) {
		run.Stop(t)
		st := retainedState(t, url, "shopfloor")
		if st.Online || st.Timestamp != birthTS {
			t.Errorf("retained STATE after stop %+v, want offline with the birth's timestamp %d", st, birthTS)
		}
	})

	for _, s := range out.Samples() {
		if strings.HasPrefix(s.Signal, "alias") || s.Signal == "" {
			t.Errorf("sample without a real name: %+v", s)
		}
	}
}

// TestInteropHostStateRepublished checks that the host puts itself back
// online when its STATE topic is overwritten with offline.
func TestInteropHostStateRepublished(t *testing.T) {
	broker := collectortest.Mosquitto(t)
	url := broker.URL()
	host := newHost(t, Config{URL: url, HostID: "h1"})
	out := &collectortest.Output{}
	collectortest.Start(t, host, out)
	collectortest.WaitConnected(t, out, 1)
	watcher := watchState(t, url, "h1")
	pub := collectortest.Publisher(t, url)
	if tok := pub.Publish(Namespace+"/STATE/h1", 1, true, `{"online":false,"timestamp":1}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	collectortest.Eventually(t, 10*time.Second, func() error {
		watcher.mu.Lock()
		defer watcher.mu.Unlock()
		n := len(watcher.states)
		if n < 3 || !watcher.states[n-1].Online || watcher.states[n-2].Online {
			return fmt.Errorf("STATE sequence %+v, want online, offline, online", watcher.states)
		}
		return nil
	})
}

// TestInteropBrokerLoss checks that losing the broker marks every machine
// offline, stamped with the time of the loss, and ends Run with an error.
func TestInteropBrokerLoss(t *testing.T) {
	broker := collectortest.Mosquitto(t)
	url := broker.URL()
	host := newHost(t, Config{URL: url, HostID: "h1", RebirthMinInterval: 100 * time.Millisecond})
	out := &collectortest.Output{}
	run := collectortest.Start(t, host, out)
	collectortest.WaitConnected(t, out, 1)
	edge := startEdgeNode(t)
	edge.do(m{"cmd": "connect", "url": url, "group": "g", "node": "n", "bdSeq": 0})
	edge.do(m{"cmd": "birth", "device": nil, "metrics": []m{}})
	edge.do(m{"cmd": "birth", "device": "d", "metrics": []m{{"name": "V", "alias": 1, "type": "Int32", "value": 1}}})
	waitValues(t, out, "g/n/d", "V", 1)
	lostAt := time.Now()
	broker.Stop()
	if err := run.Wait(t); err == nil {
		t.Fatal("Run returned nil after the broker went away")
	}
	for _, orig := range []string{"g/n/d", "g/n"} {
		got := values(out, orig, "state")
		if len(got) != 1 || got[0] != collector.String(collector.StateOffline) {
			t.Errorf("%s state %v, want offline", orig, got)
		}
	}
	for _, s := range out.Samples() {
		if s.Signal == "state" && s.SourceTime.Before(lostAt) {
			t.Errorf("offline stamped %v, before the loss", s.SourceTime)
		}
	}
}

// TestOversizedPayloadOverTheWire: a payload over max_payload_bytes,
// which the connection reads past without keeping, is still reported as
// oversized with its true size, and the host stays up.
func TestOversizedPayloadOverTheWire(t *testing.T) {
	broker := collectortest.Mosquitto(t)
	url := broker.URL()
	host := newHost(t, Config{URL: url, HostID: "h1", MaxPayloadBytes: 1024})
	out := &collectortest.Output{}
	collectortest.Start(t, host, out)
	collectortest.WaitConnected(t, out, 1)
	pub := collectortest.Publisher(t, url)
	const size = 3 << 20
	if tok := pub.Publish(Namespace+"/G1/NDATA/E1", 1, false, make([]byte, size)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	collectortest.Eventually(t, 10*time.Second, func() error {
		if got := out.BadCounts()[ReasonOversized]; got != 1 {
			return fmt.Errorf("%d oversized, want 1 (bad counts %v)", got, out.BadCounts())
		}
		return nil
	})
	if errs := out.BadErrors(); !strings.Contains(fmt.Sprint(errs), fmt.Sprintf("payload of %d bytes", size)) {
		t.Errorf("errors %v do not give the payload's %d bytes", errs, size)
	}
	if states := out.ConnectedStates(); len(states) != 1 || !states[0] {
		t.Errorf("connection states %v, want connected throughout", states)
	}
}
