//go:build integration

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// oneField is a message with a single sample, so points and samples
// can be compared one to one.
func oneField(machine string, i int) collectortest.Message {
	return collectortest.Message{
		Topic:   fmt.Sprintf("factory/line-9/%s/telemetry", machine),
		Payload: fmt.Sprintf(`{"ts":%d,"spindle_speed":%d}`, baseMS+int64(i)*10, i),
	}
}

func (a *agentProc) metric(name string, labels ...string) float64 {
	_, body := a.get("/metrics")
	return metric(body, name, labels...)
}

func (a *agentProc) waitMetric(name string, want float64, timeout time.Duration, labels ...string) {
	a.t.Helper()
	collectortest.Eventually(a.t, timeout, func() error {
		if got := a.metric(name, labels...); got != want {
			return fmt.Errorf("%s = %v, want %v", name, got, want)
		}
		return nil
	})
}

// TestDatabaseDownForAMinute: InfluxDB is stopped for 60 seconds while
// 20,000 messages flow; when it returns, all 20,000 points arrive.
func TestDatabaseDownForAMinute(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, "testdata/fast-retry.yaml", broker, influx, "shopfloor")
	pub := collectortest.Publisher(t, broker.URL())

	influx.Stop()
	down := time.Now()
	const total, chunks = 20000, 40
	for c := 0; c < chunks; c++ {
		msgs := make([]collectortest.Message, total/chunks)
		for i := range msgs {
			n := c*len(msgs) + i
			msgs[i] = telemetry("line-1", fmt.Sprintf("cnc-%02d", n%100), baseMS+int64(n)*10, n)
		}
		collectortest.Publish(t, pub, msgs...)
		time.Sleep(time.Second) // a steady flow through the outage
	}
	agent.waitMetric("shopfloor_queue_samples", total*samplesPerTelemetry, 30*time.Second, "sink=influxdb")
	if code, body := agent.get("/readyz"); code == 200 || !strings.Contains(body, "sink influxdb: down") || !strings.Contains(body, "samples queued") {
		t.Errorf("/readyz during the outage: %d %s; want 503 naming the sink, how long and how much is queued", code, body)
	}
	time.Sleep(time.Until(down.Add(60 * time.Second)))
	influx.Start()
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", total, 90*time.Second)
	countField(t, influx.URL(), "shopfloor", "program", total, 10*time.Second)
	agent.waitMetric("shopfloor_queue_records", 0, 30*time.Second, "sink=influxdb")
	agent.waitReady()
	agent.stop()
}

// TestAgentKilledMidStream: SIGKILL while QoS 1 messages stream in, a
// restart, and every message published is in InfluxDB — those the agent
// had acknowledged come from its queue, the rest from the broker.
func TestAgentKilledMidStream(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, exampleConfig, broker, influx, "shopfloor")

	const total = 10000
	var published sync.WaitGroup
	published.Add(1)
	progress := make(chan int, total/100)
	go func() {
		defer published.Done()
		pub := collectortest.Publisher(t, broker.URL())
		for c := 0; c < total/100; c++ {
			msgs := make([]collectortest.Message, 100)
			for i := range msgs {
				msgs[i] = oneField(fmt.Sprintf("cnc-%d", i%10), c*100+i)
			}
			collectortest.Publish(t, pub, msgs...)
			progress <- (c + 1) * 100
			time.Sleep(20 * time.Millisecond)
		}
	}()
	for n := range progress {
		if n >= 3000 {
			break
		}
	}
	agent.kill()
	time.Sleep(500 * time.Millisecond)
	agent.start()
	published.Wait()
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", total, 60*time.Second)
	agent.stop()
}

// lastSegment returns the newest queue segment that holds data.
func lastSegment(t *testing.T, dataDir string) string {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dataDir, "queue", "influxdb", "*.seg"))
	sort.Strings(segs)
	for i := len(segs) - 1; i >= 0; i-- {
		if info, err := os.Stat(segs[i]); err == nil && info.Size() > 0 {
			return segs[i]
		}
	}
	t.Fatalf("no queue segment with data in %s", dataDir)
	return ""
}

// TestCorruptQueueTail: a torn record at the end of the queue (a power
// cut mid-write) is detected, reported and skipped; everything before it
// is delivered.
func TestCorruptQueueTail(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, "testdata/fast-retry.yaml", broker, influx, "shopfloor")
	influx.Stop()
	const n = 500
	msgs := make([]collectortest.Message, n)
	for i := range msgs {
		msgs[i] = oneField("cnc-1", i)
	}
	collectortest.Publish(t, collectortest.Publisher(t, broker.URL()), msgs...)
	agent.waitMetric("shopfloor_queue_samples", n, 30*time.Second, "sink=influxdb")
	agent.stop()

	// Half a record header and some garbage, as a power cut leaves it.
	seg := lastSegment(t, agent.data)
	f, err := os.OpenFile(seg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	f.Close()

	influx.Start()
	agent.start()
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", n, 60*time.Second)
	if got := agent.metric("shopfloor_queue_corrupt_records_total", "sink=influxdb"); got != 1 {
		t.Errorf("shopfloor_queue_corrupt_records_total = %v, want 1", got)
	}
	logs, _ := os.ReadFile(agent.logs)
	if !strings.Contains(string(logs), "damaged record") {
		t.Errorf("the log does not report the damaged record:\n%s", logs)
	}
	agent.stop()
}

// TestQueueBoundDropsAreCountedExactly: with a queue too small for an
// outage, the oldest data is dropped, and the dropped count in /metrics is
// exactly what is missing from InfluxDB.
func TestQueueBoundDropsAreCountedExactly(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, "testdata/small-queue.yaml", broker, influx, "shopfloor")
	influx.Stop()
	const n = 20000
	msgs := make([]collectortest.Message, n)
	for i := range msgs {
		msgs[i] = oneField(fmt.Sprintf("cnc-%d", i%10), i)
	}
	collectortest.Publish(t, collectortest.Publisher(t, broker.URL()), msgs...)
	agent.waitMetric("shopfloor_source_samples_total", n, 30*time.Second, "source=factory-mqtt")
	dropped := agent.metric("shopfloor_queue_dropped_samples_total", "sink=influxdb")
	if dropped <= 0 {
		t.Fatalf("nothing dropped: the 256 KiB queue did not overflow (queue bytes %v)", agent.metric("shopfloor_queue_bytes"))
	}
	influx.Start()
	agent.waitMetric("shopfloor_queue_records", 0, 60*time.Second, "sink=influxdb")
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", n-int(dropped), 30*time.Second)
	if again := agent.metric("shopfloor_queue_dropped_samples_total", "sink=influxdb"); again != dropped {
		t.Errorf("dropped count moved from %v to %v after the outage", dropped, again)
	}
	t.Logf("queue bound: %v of %d samples dropped, %v stored", dropped, n, float64(n)-dropped)
	agent.stop()
}

// TestRefusedBatchGoesToDeadLetters: a message InfluxDB refuses (a field
// type conflict) lands in the dead-letter file with the reason, and the
// messages after it arrive.
func TestRefusedBatchGoesToDeadLetters(t *testing.T) {
	broker, influx := collectortest.Mosquitto(t), collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	agent := startAgent(t, exampleConfig, broker, influx, "shopfloor")
	pub := collectortest.Publisher(t, broker.URL())
	topic := "factory/line-5/cnc-51/telemetry"

	// "coolant" is not mapped, so it passes through with the type it has:
	// first a number, which fixes the field's type in InfluxDB...
	collectortest.Publish(t, pub, collectortest.Message{Topic: topic, Payload: fmt.Sprintf(`{"ts":%d,"coolant":1.5}`, baseMS)})
	countField(t, influx.URL(), "shopfloor", "coolant", 1, 30*time.Second)
	// ...then text, which InfluxDB refuses, among good messages.
	msgs := []collectortest.Message{}
	for i := 1; i <= 200; i++ {
		msgs = append(msgs, collectortest.Message{Topic: topic, Payload: fmt.Sprintf(`{"ts":%d,"spindle_speed":%d}`, baseMS+int64(i)*10, i)})
		if i == 100 {
			msgs = append(msgs, collectortest.Message{Topic: topic, Payload: fmt.Sprintf(`{"ts":%d,"coolant":"low"}`, baseMS+5)})
		}
	}
	collectortest.Publish(t, pub, msgs...)
	countField(t, influx.URL(), "shopfloor", "spindle_speed_rpm", 200, 30*time.Second)
	agent.waitMetric("shopfloor_sink_dead_letter_samples_total", 1, 30*time.Second, "sink=influxdb")

	f, err := os.Open(filepath.Join(agent.data, "dead-letter", "influxdb.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var letters []collector.DeadLetter
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var dl collector.DeadLetter
		if err := json.Unmarshal(sc.Bytes(), &dl); err != nil {
			t.Fatalf("dead-letter line %q: %v", sc.Text(), err)
		}
		letters = append(letters, dl)
	}
	if len(letters) != 1 || len(letters[0].Samples) != 1 {
		t.Fatalf("dead letters %+v, want one with the one refused sample", letters)
	}
	dl := letters[0]
	if s := dl.Samples[0]; s.Signal != "coolant" || s.Value != "low" || s.Machine != "cnc-51" || !strings.Contains(dl.Reason, "conflict") {
		t.Errorf("dead letter %+v, want the coolant=low sample refused for a type conflict", dl)
	}
	agent.stop()
}
