//go:build integration

package influxdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// influx starts a private InfluxDB 1.8 with database "db" and a sink on
// its bucket "db/autogen".
func influx(t *testing.T) (*collectortest.Service, *Sink) {
	t.Helper()
	svc := collectortest.Influx(t)
	collectortest.CreateDatabase(t, svc.URL(), "db")
	s, err := New(Config{URL: svc.URL(), Bucket: "db/autogen", Token: "any", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return svc, s
}

func TestIntegrationKindsTagsTimes(t *testing.T) {
	svc, s := influx(t)
	ts := time.Date(2024, 3, 5, 14, 30, 0, 123456789, time.UTC)
	asset := collector.Asset{Site: "emmeloord", Area: "hal 2", Line: "l,1", Machine: "mill=1"}
	samples := []collector.Sample{
		sample(asset, "cnc", "spindle_speed_rpm", collector.Float(12000.5), ts),
		sample(asset, "cnc", "part_count_good", collector.Int(42), ts),
		sample(asset, "cnc", "door_open", collector.Bool(true), ts),
		sample(asset, "cnc", "alarm_text", collector.String(`door "B" open, C:\temp`), ts),
		withQuality(sample(asset, "cnc", "temperature_c", collector.Value{}, ts), collector.QualityBad),
		sample(collector.Asset{Machine: "robot-1"}, "robot", "tcp_speed_mm_s", collector.Float(250), ts.Add(time.Nanosecond)),
	}
	if err := s.Write(context.Background(), samples); err != nil {
		t.Fatal(err)
	}

	series, err := collectortest.QueryErr(svc.URL(), "db", "SHOW FIELD KEYS FROM machine")
	if err != nil || len(series) != 1 {
		t.Fatalf("SHOW FIELD KEYS: %v %+v", err, series)
	}
	types := map[string]string{}
	for _, row := range series[0].Values {
		types[row[0].(string)] = row[1].(string)
	}
	want := map[string]string{
		"spindle_speed_rpm": "float", "part_count_good": "integer", "door_open": "boolean",
		"alarm_text": "string", "temperature_c_quality": "string", "tcp_speed_mm_s": "float",
	}
	for k, v := range want {
		if types[k] != v {
			t.Errorf("field %s has type %q, want %q (all: %v)", k, types[k], v, types)
		}
	}
	if len(types) != len(want) {
		t.Errorf("fields %v, want exactly %v", types, want)
	}

	cols, rows := collectortest.Query(t, svc.URL(), "db",
		`SELECT * FROM machine WHERE machine = 'mill=1'`)
	if len(rows) != 1 {
		t.Fatalf("rows %v, want one point for the one message", rows)
	}
	got := map[string]any{}
	for i, c := range cols {
		got[c] = rows[0][i]
	}
	checks := map[string]string{
		"time": fmt.Sprint(ts.UnixNano()), "site": "emmeloord", "area": "hal 2", "line": "l,1", "machine": "mill=1",
		"machine_type": "cnc", "spindle_speed_rpm": "12000.5", "part_count_good": "42", "door_open": "true",
		"alarm_text": `door "B" open, C:\temp`, "temperature_c_quality": "bad",
	}
	for k, v := range checks {
		if fmt.Sprint(got[k]) != v {
			t.Errorf("%s = %v, want %s", k, got[k], v)
		}
	}

	_, rows = collectortest.Query(t, svc.URL(), "db",
		`SELECT tcp_speed_mm_s, machine_type, site FROM machine WHERE machine = 'robot-1'`)
	if len(rows) != 1 || rows[0][0].(json.Number).String() != fmt.Sprint(ts.UnixNano()+1) {
		t.Fatalf("robot rows %v, want one at %d (exact to the nanosecond)", rows, ts.UnixNano()+1)
	}
	if rows[0][2] != "robot" || rows[0][3] != nil {
		t.Errorf("robot tags %v: want machine_type=robot and no site", rows[0])
	}
}

func TestIntegrationFieldTypeConflict(t *testing.T) {
	_, s := influx(t)
	ts := time.Date(2024, 3, 5, 14, 30, 0, 0, time.UTC)
	if err := s.Write(context.Background(), []collector.Sample{sample(mill1, "cnc", "program", collector.Float(1234), ts)}); err != nil {
		t.Fatal(err)
	}
	err := s.Write(context.Background(), []collector.Sample{sample(mill1, "cnc", "program", collector.String("O1234"), ts.Add(time.Second))})
	if err == nil {
		t.Fatal("a string into a float field was accepted")
	}
	if _, ok := collector.IsRetryable(err); ok {
		t.Fatalf("a field type conflict must not be retryable: %v", err)
	}
	var we *WriteError
	if !errors.As(err, &we) || we.StatusCode != 400 || !strings.Contains(err.Error(), "field type conflict") {
		t.Errorf("want a 400 *WriteError naming the conflict, got %v", err)
	}
	t.Log(err)
}

func TestIntegrationServerDown(t *testing.T) {
	svc, s := influx(t)
	ts := time.Date(2024, 3, 5, 14, 30, 0, 0, time.UTC)
	batch := []collector.Sample{sample(mill1, "cnc", "power_w", collector.Float(900), ts)}

	svc.Stop()
	err := s.Write(context.Background(), batch)
	if _, ok := collector.IsRetryable(err); !ok {
		t.Fatalf("a stopped server must give a retryable error, got %v", err)
	}
	t.Log(err)

	svc.Start() // waits until /ping answers
	if err := s.Write(context.Background(), batch); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
	collectortest.Eventually(t, 10*time.Second, func() error {
		_, rows := collectortest.Query(t, svc.URL(), "db", "SELECT power_w FROM machine")
		if len(rows) != 1 {
			return fmt.Errorf("rows %v", rows)
		}
		return nil
	})
}

func TestIntegrationUnknownDatabase(t *testing.T) {
	svc, _ := influx(t)
	s, err := New(Config{URL: svc.URL(), Bucket: "nodb/autogen"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Write(context.Background(), someSamples(1))
	// Retryable: the data is fine, the server needs a person; dropping
	// it would lose every batch until then.
	if _, ok := collector.IsRetryable(err); !ok || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "database not found") {
		t.Fatalf("want a retryable 404 naming the missing database, got %v", err)
	}
}

// TestIntegrationControlCharacters records what InfluxDB keeps of a string
// with a newline and a tab: the encoder escapes them as \n and \t, which
// InfluxDB 1.x and 2.x do not unescape.
func TestIntegrationControlCharacters(t *testing.T) {
	svc, s := influx(t)
	ts := time.Date(2024, 3, 5, 14, 30, 0, 0, time.UTC)
	if err := s.Write(context.Background(), []collector.Sample{sample(mill1, "cnc", "alarm_text", collector.String("a\nb\tc"), ts)}); err != nil {
		t.Fatal(err)
	}
	_, rows := collectortest.Query(t, svc.URL(), "db", "SELECT alarm_text FROM machine")
	if len(rows) != 1 {
		t.Fatalf("rows %v", rows)
	}
	if got, want := rows[0][1], `a\nb\tc`; got != want {
		t.Errorf("stored %q, want %q (escaped, on one line)", got, want)
	}
}
