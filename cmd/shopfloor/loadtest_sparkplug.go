package main

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// The Sparkplug B form of the load: group "plant", one edge node per line
// (line-0 … line-9), one device per machine. Each node sends its NBIRTH
// and its devices' DBIRTHs, then one DDATA per message with the same five
// numbers and string as the JSON load, by alias. A node's messages must
// reach the host in sequence-number order, so all of one node's messages
// go through one publisher connection.
const (
	sparkplugGroup = "plant"
	sparkplugLines = 10
)

// sparkplugMetric is one metric of the load: its name (the same field
// names as the JSON load), alias and Sparkplug data type.
type sparkplugMetric struct {
	name     string
	alias    uint64
	datatype uint32
}

var sparkplugMetrics = []sparkplugMetric{
	{"spindle_speed", 1, 8}, // UInt64
	{"spindle_load", 2, 10}, // Double
	{"temperature", 3, 10},
	{"power_w", 4, 10},
	{"part_count", 5, 8},
	{"state", 6, 12}, // String
}

// sparkplugNode is the edge node of machine m.
func sparkplugNode(o loadOptions, m int) int { return m % min(sparkplugLines, o.machines) }

// sparkplugBirths returns node n's NBIRTH and its devices' DBIRTHs, with
// sequence numbers from 0; the next free one is len(births) % 256.
func sparkplugBirths(o loadOptions, n int, ts int64) (topics []string, payloads [][]byte) {
	node := fmt.Sprintf("line-%d", n)
	// NBIRTH: bdSeq and the rebirth control, as Sparkplug 3.0 requires.
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(ts))
	b = appendSparkplugMetric(b, "bdSeq", 0, 4, func(v []byte) []byte {
		return protowire.AppendVarint(protowire.AppendTag(v, 11, protowire.VarintType), 0)
	})
	b = appendSparkplugMetric(b, "Node Control/Rebirth", 0, 11, func(v []byte) []byte {
		return protowire.AppendVarint(protowire.AppendTag(v, 14, protowire.VarintType), 0)
	})
	b = protowire.AppendTag(b, 3, protowire.VarintType)
	b = protowire.AppendVarint(b, 0)
	topics, payloads = append(topics, "spBv1.0/"+sparkplugGroup+"/NBIRTH/"+node), append(payloads, b)
	for m := 0; m < o.machines; m++ {
		if sparkplugNode(o, m) != n {
			continue
		}
		seq := uint64(len(payloads) % 256)
		b := protowire.AppendTag(nil, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(ts))
		for _, mt := range sparkplugMetrics {
			b = appendSparkplugMetric(b, mt.name, mt.alias, mt.datatype, func(v []byte) []byte {
				if mt.datatype == 12 {
					return protowire.AppendString(protowire.AppendTag(v, 15, protowire.BytesType), "idle")
				}
				return appendSparkplugValue(v, mt.datatype, 0)
			})
		}
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, seq)
		topics = append(topics, fmt.Sprintf("spBv1.0/%s/DBIRTH/%s/m-%03d", sparkplugGroup, node, m))
		payloads = append(payloads, b)
	}
	return topics, payloads
}

// sparkplugData is message i as a DDATA with sequence number seq: the
// same values as the JSON message i, by alias.
func sparkplugData(o loadOptions, i int, ts int64, seq uint64) (string, []byte) {
	m := i % o.machines
	values := [5]float64{float64(12000 + i%1000), float64(40+i%20) + 0.5, float64(30+i%10) + 0.25, float64(5000 + i%700), float64(i / o.machines)}
	b := make([]byte, 0, 128)
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(ts))
	for k, mt := range sparkplugMetrics {
		b = appendSparkplugMetric(b, "", mt.alias, 0, func(v []byte) []byte {
			if mt.datatype == 12 {
				return protowire.AppendString(protowire.AppendTag(v, 15, protowire.BytesType), "running")
			}
			return appendSparkplugValue(v, mt.datatype, values[k])
		})
	}
	b = protowire.AppendTag(b, 3, protowire.VarintType)
	b = protowire.AppendVarint(b, seq)
	return fmt.Sprintf("spBv1.0/%s/DDATA/line-%d/m-%03d", sparkplugGroup, sparkplugNode(o, m), m), b
}

// appendSparkplugMetric appends Payload.metrics (field 2): name and
// datatype when given (births), the alias, and the value value appends.
func appendSparkplugMetric(b []byte, name string, alias uint64, datatype uint32, value func([]byte) []byte) []byte {
	var mb []byte
	if name != "" {
		mb = protowire.AppendString(protowire.AppendTag(mb, 1, protowire.BytesType), name)
	}
	if alias != 0 {
		mb = protowire.AppendVarint(protowire.AppendTag(mb, 2, protowire.VarintType), alias)
	}
	if datatype != 0 {
		mb = protowire.AppendVarint(protowire.AppendTag(mb, 4, protowire.VarintType), uint64(datatype))
	}
	mb = value(mb)
	return protowire.AppendBytes(protowire.AppendTag(b, 2, protowire.BytesType), mb)
}

// appendSparkplugValue appends a numeric value in the field its data type
// uses: long_value for UInt64, double_value for Double.
func appendSparkplugValue(b []byte, datatype uint32, v float64) []byte {
	if datatype == 8 {
		return protowire.AppendVarint(protowire.AppendTag(b, 11, protowire.VarintType), uint64(v))
	}
	return protowire.AppendFixed64(protowire.AppendTag(b, 13, protowire.Fixed64Type), math.Float64bits(v))
}
