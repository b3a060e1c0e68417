package opcua

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
)

func dv(v any, status ua.StatusCode, src, srv time.Time) *ua.DataValue {
	d := &ua.DataValue{Status: status, SourceTimestamp: src, ServerTimestamp: srv}
	if v != nil {
		d.Value = ua.MustVariant(v)
	}
	return d
}

func TestConvertScalars(t *testing.T) {
	recv := time.Date(2024, 3, 5, 12, 0, 0, 0, time.UTC)
	src := recv.Add(-time.Second)
	guid := ua.NewGUID("72962B91-FA75-4AE6-8D28-B404DC7DAF63")
	for _, tc := range []struct {
		name string
		in   any
		want collector.Value
	}{
		{"bool", true, collector.Bool(true)},
		{"sbyte", int8(-8), collector.Int(-8)},
		{"byte", uint8(200), collector.Int(200)},
		{"int16", int16(-1600), collector.Int(-1600)},
		{"uint16", uint16(61000), collector.Int(61000)},
		{"int32", int32(-320000), collector.Int(-320000)},
		{"uint32", uint32(4000000000), collector.Int(4000000000)},
		{"int64", int64(math.MinInt64), collector.Int(math.MinInt64)},
		{"uint64", uint64(7), collector.Int(7)},
		{"uint64 huge", uint64(math.MaxUint64), collector.Float(float64(uint64(math.MaxUint64)))},
		{"float", float32(1.5), collector.Float(1.5)},
		{"double", 2.25, collector.Float(2.25)},
		{"string", "O1234", collector.String("O1234")},
		{"datetime", time.Date(2024, 3, 5, 14, 30, 0, 0, time.UTC), collector.String("2024-03-05T14:30:00Z")},
		{"guid", guid, collector.String(guid.String())},
		{"bytestring", []byte{0xca, 0xfe}, collector.String("cafe")},
		{"xml", ua.XMLElement("<a/>"), collector.String("<a/>")},
		{"nodeid", ua.NewStringNodeID(2, "x"), collector.String("ns=2;s=x")},
		{"expandednodeid", ua.NewExpandedNodeID(ua.NewStringNodeID(2, "x"), "", 0), collector.String("ns=2;s=x")},
		{"variant", ua.MustVariant(int32(5)), collector.Int(5)},
		{"statuscode", ua.StatusBadTimeout, collector.Int(int64(ua.StatusBadTimeout))},
		{"qualifiedname", &ua.QualifiedName{NamespaceIndex: 1, Name: "qn"}, collector.String("qn")},
		{"localizedtext", &ua.LocalizedText{Text: "Hallo", Locale: "nl"}, collector.String("Hallo")},
	} {
		got, err := Convert(nil, "x", dv(tc.in, ua.StatusOK, src, time.Time{}), nil, recv)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if len(got) != 1 || got[0].Value != tc.want || got[0].Quality != collector.QualityGood || !got[0].SourceTime.Equal(src) || !got[0].ReceiveTime.Equal(recv) {
			t.Errorf("%s: got %+v, want %v good at %v", tc.name, got, tc.want.Format(), src)
		}
	}
}

func TestConvertArrayEnumQualityTime(t *testing.T) {
	recv := time.Date(2024, 3, 5, 12, 0, 0, 0, time.UTC)
	srv := recv.Add(-2 * time.Second)

	got, err := Convert(nil, "joint_torque_nm", dv([]float64{1, 2, 3}, ua.StatusOK, time.Time{}, srv), nil, recv)
	if err != nil || len(got) != 3 || got[2].Signal != "joint_torque_nm_3" || got[2].Value != collector.Float(3) {
		t.Fatalf("array = %+v, %v", got, err)
	}
	if !got[0].SourceTime.Equal(srv) {
		t.Errorf("no source timestamp: time %v, want the server's %v", got[0].SourceTime, srv)
	}

	got, _ = Convert(nil, "x", dv(2.0, ua.StatusOK, time.Time{}, time.Time{}), nil, recv)
	if !got[0].SourceTime.Equal(recv) {
		t.Errorf("no timestamps: time %v, want receive time", got[0].SourceTime)
	}

	enums := enumNames{0: "Stopped", 1: "Running"}
	got, _ = Convert(nil, "State", dv(int32(1), ua.StatusOK, recv, time.Time{}), enums, recv)
	if got[0].Value != collector.String("Running") {
		t.Errorf("enum = %v, want Running", got[0].Value.Format())
	}
	got, _ = Convert(nil, "State", dv(int32(9), ua.StatusOK, recv, time.Time{}), enums, recv)
	if got[0].Value != collector.String("9") {
		t.Errorf("unknown enum = %v, want the number as text", got[0].Value.Format())
	}

	got, _ = Convert(nil, "x", dv(3.5, ua.StatusBadDeviceFailure, recv, time.Time{}), nil, recv)
	if got[0].Quality != collector.QualityBad || got[0].Value.Kind() != collector.KindNone {
		t.Errorf("bad = %+v, want a quality-only bad sample", got[0])
	}
	got, _ = Convert(nil, "x", dv(3.5, ua.StatusUncertainLastUsableValue, recv, time.Time{}), nil, recv)
	if got[0].Quality != collector.QualityUncertain || got[0].Value != collector.Float(3.5) {
		t.Errorf("uncertain = %+v", got[0])
	}

	_, err = Convert(nil, "x", &ua.DataValue{Value: ua.MustVariant(ua.NewExtensionObject(&ua.EnumValueType{}))}, nil, recv)
	if !errors.Is(err, errUnsupported) {
		t.Errorf("structure: err %v, want errUnsupported", err)
	}
}

func TestEnumNames(t *testing.T) {
	s := enumFromStrings(ua.MustVariant([]*ua.LocalizedText{{Text: "Off"}, {Text: "On"}}))
	if s[1] != "On" {
		t.Errorf("EnumStrings = %v", s)
	}
	v := enumFromValues(ua.MustVariant([]*ua.ExtensionObject{
		ua.NewExtensionObject(&ua.EnumValueType{Value: 7, DisplayName: &ua.LocalizedText{Text: "Service"}}),
	}))
	if v[7] != "Service" {
		t.Errorf("EnumValues = %v", v)
	}
}

func TestQuality(t *testing.T) {
	for s, want := range map[ua.StatusCode]collector.Quality{
		ua.StatusOK:                       collector.QualityGood,
		ua.StatusUncertainLastUsableValue: collector.QualityUncertain,
		ua.StatusBadNodeIDUnknown:         collector.QualityBad,
		0xC0000000:                        collector.QualityBad,
	} {
		if got := Quality(s); got != want {
			t.Errorf("Quality(%v) = %v, want %v", s, got, want)
		}
	}
}

func TestUnitFromEU(t *testing.T) {
	eu := &ua.EUInformation{
		NamespaceURI: "http://www.opcfoundation.org/UA/units/un/cefact",
		UnitID:       4604232, // FAH
		DisplayName:  &ua.LocalizedText{Text: " °F ", EncodingMask: ua.LocalizedTextText},
		Description:  &ua.LocalizedText{Text: "degree Fahrenheit", EncodingMask: ua.LocalizedTextText},
	}
	for _, tc := range []struct {
		v    *ua.Variant
		want string
	}{
		{ua.MustVariant(ua.NewExtensionObject(eu)), "°F"},
		{ua.MustVariant(ua.NewExtensionObject(&ua.EUInformation{UnitID: 4604232})), ""},
		{ua.MustVariant("kW"), ""},
		{nil, ""},
	} {
		if got := unitFromEU(tc.v); got != tc.want {
			t.Errorf("unitFromEU(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}
