package opcua

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
)

// Reasons passed to Output.Bad.
const (
	ReasonNodeUnknown     = "node_unknown"
	ReasonAccessDenied    = "access_denied"
	ReasonBadStatus       = "bad_status"
	ReasonUnsupportedType = "unsupported_type"
	ReasonBrowseFailed    = "browse_failed"
)

// maxArrayElements bounds how many samples one array value becomes, so a
// 64k-element buffer exposed as a variable cannot flood the pipeline.
const maxArrayElements = 1024

// Quality maps an OPC UA status code to a sample quality by its severity
// bits (Part 4, 7.34.1).
func Quality(s ua.StatusCode) collector.Quality {
	switch uint32(s) >> 30 {
	case 0:
		return collector.QualityGood
	case 1:
		return collector.QualityUncertain
	}
	return collector.QualityBad
}

// sampleTime picks the source timestamp, else the server's, else the
// receive time: the machine's clock is the truth, the server's is close,
// and ours is the last resort.
func sampleTime(dv *ua.DataValue, received time.Time) time.Time {
	switch {
	case dv != nil && !dv.SourceTimestamp.IsZero() && dv.SourceTimestamp.Year() > 1601:
		return dv.SourceTimestamp
	case dv != nil && !dv.ServerTimestamp.IsZero() && dv.ServerTimestamp.Year() > 1601:
		return dv.ServerTimestamp
	}
	return received
}

// enumNames maps an enumeration's numbers to names, from EnumStrings or
// EnumValues.
type enumNames map[int64]string

// errUnsupported marks a value whose type has no sample form.
var errUnsupported = errors.New("unsupported type")

// Convert appends the samples of one data value to dst: one sample for a
// scalar, one per element for an array (name_1, name_2, ...), a
// quality-only sample for a Bad status. enums, when set, turns integer
// values into their names. It returns an error wrapping errUnsupported
// for types that have no sample form (structures), and appends nothing
// then.
func Convert(dst []collector.Sample, name string, dv *ua.DataValue, enums enumNames, received time.Time) ([]collector.Sample, error) {
	s := collector.Sample{Signal: name, ReceiveTime: received, SourceTime: sampleTime(dv, received)}
	if dv == nil {
		s.Quality = collector.QualityBad
		return append(dst, s), nil
	}
	s.Quality = Quality(dv.Status)
	if s.Quality == collector.QualityBad || dv.Value == nil || dv.Value.Value() == nil {
		// A Bad reading keeps its place in the series as quality only;
		// an empty Good value (a server that has no value yet) too.
		if s.Quality == collector.QualityGood {
			s.Quality = collector.QualityUncertain
		}
		return append(dst, s), nil
	}
	v := dv.Value.Value()
	if dv.Value.ArrayLength() > 0 || isSlice(v) {
		rv := reflect.ValueOf(v)
		if rv.Kind() != reflect.Slice {
			return dst, fmt.Errorf("%w: array of %T", errUnsupported, v)
		}
		n := min(rv.Len(), maxArrayElements)
		start := len(dst)
		for i := 0; i < n; i++ {
			val, err := scalar(rv.Index(i).Interface(), enums)
			if err != nil {
				return dst[:start], err
			}
			e := s
			e.Signal = name + "_" + strconv.Itoa(i+1)
			e.Value = val
			dst = append(dst, e)
		}
		return dst, nil
	}
	val, err := scalar(v, enums)
	if err != nil {
		return dst, err
	}
	s.Value = val
	return append(dst, s), nil
}

func isSlice(v any) bool {
	if _, ok := v.([]byte); ok {
		return false // a ByteString is one value
	}
	return reflect.TypeOf(v).Kind() == reflect.Slice
}

// scalar converts one built-in type value.
func scalar(v any, enums enumNames) (collector.Value, error) {
	if enums != nil {
		if i, ok := asInt(v); ok {
			if name, ok := enums[i]; ok {
				return collector.String(name), nil
			}
			return collector.String(strconv.FormatInt(i, 10)), nil
		}
	}
	switch x := v.(type) {
	case bool:
		return collector.Bool(x), nil
	case int8, uint8, int16, uint16, int32, uint32, int64:
		i, _ := asInt(x)
		return collector.Int(i), nil
	case uint64:
		if x > math.MaxInt64 {
			// InfluxDB integers are signed; a float keeps the
			// magnitude where an int would wrap.
			return collector.Float(float64(x)), nil
		}
		return collector.Int(int64(x)), nil
	case float32:
		return collector.Float(float64(x)), nil
	case float64:
		return collector.Float(x), nil
	case string:
		return collector.String(x), nil
	case time.Time:
		return collector.String(x.UTC().Format(time.RFC3339Nano)), nil
	case *ua.GUID:
		return collector.String(x.String()), nil
	case []byte:
		return collector.String(hex.EncodeToString(x)), nil
	case ua.XMLElement:
		return collector.String(string(x)), nil
	case *ua.NodeID:
		return collector.String(x.String()), nil
	case *ua.ExpandedNodeID:
		return collector.String(x.String()), nil
	case ua.StatusCode:
		return collector.Int(int64(x)), nil
	case *ua.QualifiedName:
		return collector.String(x.Name), nil
	case *ua.LocalizedText:
		return collector.String(x.Text), nil
	case *ua.Variant:
		return scalar(x.Value(), enums)
	}
	return collector.Value{}, fmt.Errorf("%w %T", errUnsupported, v)
}

func asInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int8:
		return int64(x), true
	case uint8:
		return int64(x), true
	case int16:
		return int64(x), true
	case uint16:
		return int64(x), true
	case int32:
		return int64(x), true
	case uint32:
		return int64(x), true
	case int64:
		return x, true
	case uint64:
		if x <= math.MaxInt64 {
			return int64(x), true
		}
	}
	return 0, false
}

// enumFromStrings builds the names of an EnumStrings property
// (LocalizedText[], numbered from 0).
func enumFromStrings(v *ua.Variant) enumNames {
	if v == nil {
		return nil
	}
	lts, ok := v.Value().([]*ua.LocalizedText)
	if !ok || len(lts) == 0 {
		return nil
	}
	m := make(enumNames, len(lts))
	for i, lt := range lts {
		if lt != nil {
			m[int64(i)] = lt.Text
		}
	}
	return m
}

// enumFromValues builds the names of an EnumValues property
// (EnumValueType[] with explicit numbers).
func enumFromValues(v *ua.Variant) enumNames {
	if v == nil {
		return nil
	}
	eos, ok := v.Value().([]*ua.ExtensionObject)
	if !ok || len(eos) == 0 {
		return nil
	}
	m := make(enumNames, len(eos))
	for _, eo := range eos {
		if eo == nil {
			continue
		}
		if ev, ok := eo.Value.(*ua.EnumValueType); ok && ev.DisplayName != nil {
			m[ev.Value] = ev.DisplayName.Text
		}
	}
	if len(m) == 0 {
		return nil
	}
	return m
}

// unitFromEU returns the display name of an EngineeringUnits property
// (an EUInformation): "kW", "°C", "mm/min". That is the spelling PLC
// programmers choose and the collector's unit table knows; the UNECE
// code beside it is not used. Empty when v holds no EUInformation.
func unitFromEU(v *ua.Variant) string {
	if v == nil {
		return ""
	}
	var eu *ua.EUInformation
	switch x := v.Value().(type) {
	case *ua.ExtensionObject:
		if x != nil {
			eu, _ = x.Value.(*ua.EUInformation)
		}
	case *ua.EUInformation:
		eu = x
	}
	if eu == nil || eu.DisplayName == nil {
		return ""
	}
	return strings.TrimSpace(eu.DisplayName.Text)
}

// badReason classifies a status that means the node itself is unusable
// (as opposed to a Bad reading); empty for any other status.
func badReason(s ua.StatusCode) string {
	switch s {
	case ua.StatusBadNodeIDUnknown, ua.StatusBadNodeIDInvalid, ua.StatusBadAttributeIDInvalid:
		return ReasonNodeUnknown
	case ua.StatusBadUserAccessDenied, ua.StatusBadNotReadable, ua.StatusBadSecurityModeInsufficient:
		return ReasonAccessDenied
	}
	return ""
}
