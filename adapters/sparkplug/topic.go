package sparkplug

import (
	"errors"
	"strings"
)

// Namespace is the first topic level of every Sparkplug B message.
const Namespace = "spBv1.0"

// Message types of the Sparkplug B topic namespace.
const (
	typeNBIRTH = "NBIRTH"
	typeNDEATH = "NDEATH"
	typeDBIRTH = "DBIRTH"
	typeDDEATH = "DDEATH"
	typeNDATA  = "NDATA"
	typeDDATA  = "DDATA"
	typeNCMD   = "NCMD"
	typeDCMD   = "DCMD"
	typeSTATE  = "STATE"
)

// nodeKey names one edge node: group id and edge node id.
type nodeKey struct {
	group, edge string
}

// topic is a parsed Sparkplug topic:
// spBv1.0/<group_id>/<type>/<edge_node_id>[/<device_id>], or
// spBv1.0/STATE/<host_id> with host in edge.
type topic struct {
	node   nodeKey
	kind   string
	device string
}

var errNotSparkplug = errors.New("not a Sparkplug B topic")

// parseTopic splits a topic; it refuses anything that does not have the
// shape its message type needs, so a stray publish under spBv1.0 cannot
// create a phantom edge node.
func parseTopic(s string) (topic, error) {
	rest, ok := strings.CutPrefix(s, Namespace+"/")
	if !ok {
		return topic{}, errNotSparkplug
	}
	parts := strings.Split(rest, "/")
	if len(parts) == 2 && parts[0] == typeSTATE && parts[1] != "" {
		return topic{kind: typeSTATE, node: nodeKey{edge: parts[1]}}, nil
	}
	if len(parts) < 3 || parts[0] == "" || parts[2] == "" {
		return topic{}, errNotSparkplug
	}
	t := topic{node: nodeKey{group: parts[0], edge: parts[2]}, kind: parts[1]}
	switch t.kind {
	case typeNBIRTH, typeNDEATH, typeNDATA, typeNCMD:
		if len(parts) != 3 {
			return topic{}, errNotSparkplug
		}
	case typeDBIRTH, typeDDEATH, typeDDATA, typeDCMD:
		if len(parts) != 4 || parts[3] == "" {
			return topic{}, errNotSparkplug
		}
		t.device = parts[3]
	default:
		return topic{}, errNotSparkplug
	}
	return t, nil
}

// origin is the Batch.Origin of a node's or a device's samples:
// "<group>/<edge node>/<device>", and "<group>/<edge node>" for the edge
// node's own metrics, so asset templates of three segments place devices
// and templates of two place edge nodes.
func origin(k nodeKey, device string) string {
	if device == "" {
		return k.group + "/" + k.edge
	}
	return k.group + "/" + k.edge + "/" + device
}

// validID reports why s cannot be a Sparkplug group, edge node, device or
// host id: the ids are topic levels, so they may not be empty or hold the
// MQTT separators and wildcards.
func validID(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case strings.ContainsAny(s, "/+#"):
		return errors.New("may not contain /, + or #, which are MQTT topic separators and wildcards")
	}
	return nil
}
