package sparkplug

import (
	"encoding/json"
	"maps"
	"math"
	"os"
	"slices"
	"testing"

	"github.com/noordoostpolder/shopfloor/collector"
)

// everyType reads testdata/payloads/every-type.json: a device birth with
// one metric of each Sparkplug datatype the host turns into samples, plus
// a Bytes metric it cannot, in the form the npm edge node takes.
func everyType(t testing.TB) []map[string]any {
	t.Helper()
	b, err := os.ReadFile("testdata/payloads/every-type.json")
	if err != nil {
		t.Fatal(err)
	}
	var ms []map[string]any
	if err := json.Unmarshal(b, &ms); err != nil {
		t.Fatal(err)
	}
	return ms
}

// wantEveryType is what that birth must become.
var wantEveryType = map[string]collector.Value{
	"I8": collector.Int(-5), "I16": collector.Int(-300), "I32": collector.Int(-70000),
	"I64": collector.Int(-9007199254740993), "U8": collector.Int(255), "U16": collector.Int(65535),
	"U32": collector.Int(4294967295), "U64": collector.Int(math.MaxInt64),
	"Temperature": collector.Float(36.2), "D": collector.Float(1.0000000001), "B": collector.Bool(true),
	"Program": collector.String("O1234"), "Serviced": collector.String("2025-11-29T10:40:00.123Z"),
	"Note": collector.String("two\nlines"), "Id": collector.String("0b7e5c2a-2f4e-4c59-9c55-0d9a2b7c1e11"),
	"A8/0": collector.Int(-1), "A8/1": collector.Int(127), "A16/0": collector.Int(-2), "A32/0": collector.Int(-3),
	"A64/0": collector.Int(-4), "AU8/0": collector.Int(200), "AU16/0": collector.Int(60000),
	"AU32/0": collector.Int(4000000000), "AU64/0": collector.Int(5), "AF/0": collector.Float(1.5),
	"AF/1": collector.Float(-0.25), "AD/0": collector.Float(0.1), "AB/0": collector.Bool(true),
	"AB/1": collector.Bool(false), "AB/2": collector.Bool(true), "AS/0": collector.String("x"),
	"AS/1": collector.String("yz"), "ADT/0": collector.String("1970-01-01T00:00:00Z"),
}

// TestGoldenEveryType decodes a DBIRTH encoded by npm sparkplug-payload
// (testdata/edgenode/encode-golden.js), so the datatype mapping is checked
// against the independent encoder even without the integration services.
func TestGoldenEveryType(t *testing.T) {
	data, err := os.ReadFile("testdata/payloads/every-type.dbirth.bin")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Config{})
	h.send("spBv1.0/plant/NBIRTH/line1", payload(1000, 0, metric("bdSeq", TypeInt64, uint64(0))))
	h.sendRaw("spBv1.0/plant/DBIRTH/line1/mill-1", data)
	got := map[string]collector.Value{}
	for _, s := range h.out.Samples() {
		if _, dup := got[s.Signal]; dup {
			t.Errorf("%s emitted twice", s.Signal)
		}
		got[s.Signal] = s.Value
		if s.Signal == "Temperature" && s.Unit != "°C" {
			t.Errorf("Temperature unit %q", s.Unit)
		}
		if s.SourceTime.UnixMilli() != 1764412800000 {
			t.Errorf("%s at %v, want the payload timestamp", s.Signal, s.SourceTime)
		}
	}
	for name, want := range wantEveryType {
		if got[name] != want {
			t.Errorf("%s = %#v, want %#v", name, got[name], want)
		}
	}
	if len(got) != len(wantEveryType) {
		t.Errorf("signals %v, want exactly those of wantEveryType", slices.Sorted(maps.Keys(got)))
	}
	if bad := h.out.BadCounts(); bad[ReasonUnsupportedType] != 1 || len(bad) != 1 {
		t.Errorf("bad %v, want one unsupported_type (the Bytes metric)", bad)
	}
}
