// Package sparkplug is a Sparkplug B 3.0 host application: it reads the
// births, data and deaths of Sparkplug edge nodes from an MQTT broker
// (MQTT 3.1.1 through github.com/eclipse/paho.mqtt.golang) and hands their
// metrics to the collector. Payloads are decoded with Go code generated
// from Eclipse Tahu's sparkplug_b.proto (package sparkplugpb).
//
// # Host state
//
// The host connects with a will on spBv1.0/STATE/<host_id> carrying
// {"online":false,"timestamp":T}, QoS 1, retained; after subscribing it
// publishes {"online":true,"timestamp":T} there with the same T, and the
// death again before a clean disconnect. When it sees its own STATE
// offline while connected, it publishes the birth again. Edge nodes that
// name this host as their primary host send their births when it comes
// online.
//
// # Sessions, aliases and sequence numbers
//
// NBIRTH and DBIRTH certificates are cached per edge node and device:
// metric names, aliases, datatypes and engineering units. NDATA and DDATA
// metrics are resolved by alias (or by name, when they carry one). The
// bdSeq of an NDEATH must match the one of the current NBIRTH, so a late
// will of an earlier session does not kill a live node. Every message of
// a node after its NBIRTH carries seq 0..255, wrapping; one that arrives
// early is held for reorder_timeout waiting for the missing ones, after
// which the gap is counted (seq_gap), the held messages are applied in
// order, and an NCMD "Node Control/Rebirth" asks the node for fresh
// births. Data before a birth (before_birth) and unknown aliases
// (unknown_alias) also ask for a rebirth. Requests to one node are at
// least rebirth_min_interval apart. The caches live in the Source, across
// reconnects.
//
// # Samples
//
// One message becomes one collector.Batch. Its Origin is
// "<group_id>/<edge_node_id>/<device_id>" for device messages and
// "<group_id>/<edge_node_id>" for the edge node's own metrics, so an asset
// template "{area}/{line}/{machine}" places devices and "{area}/{machine}"
// places edge nodes. A sample's Signal is the metric name (mapping rules
// turn it into a canonical signal; unmapped names are sanitised: "Spindle
// /Speed" becomes spindle_speed), its Unit the metric's engineering unit
// property (engUnit, engUnits, engineeringUnits, unit or units), its
// Quality the OPC-style Quality property when present (192 good, 64..191
// uncertain, else bad), and its SourceTime the metric's timestamp, else
// the payload's, else the receive time.
//
// Datatypes: the integers become Int, sign-extended from their width
// (Int8 -1 is -1 whether sent as 0xFF or 0xFFFFFFFF), Int64 and UInt64
// exactly (a UInt64 above 2^63-1 is refused as bad_value rather than
// rounded); Float and Double become Float (a Float keeps its shortest
// decimal form: 36.2, not 36.20000076); Boolean Bool; String, Text and
// UUID String; DateTime RFC 3339 text in UTC. Arrays become one sample per
// element named "<metric>/<index>", template instances one per member
// named "<metric>/<member>". DataSet, Bytes, File and property-set metrics
// have no sample form: they are counted once per birth as unsupported_type
// and left out. bdSeq, "Node Control/*" and "Device Control/*" are
// protocol, not data, and are left out. A metric with is_null becomes a
// valueless sample of bad quality.
//
// Historical values (is_historical) are emitted with their own timestamp,
// which lies before the live values of the same metric; they add points
// to the past and never replace the current value.
//
// # Offline
//
// NDEATH marks the node and each of its live devices offline, DDEATH the
// device, and a lost broker connection every live node: per machine, a
// valueless sample of bad quality for each metric of its birth (they are
// stale now) and a "state" sample "offline", all stamped with the receive
// time.
//
// # Configuration
//
//	sparkplug:
//	  url: tcp://broker:1883
//	  host_id: shopfloor            # STATE topic spBv1.0/STATE/shopfloor
//	  client_id: shopfloor-host     # default: host_id
//	  username: agent
//	  password: ${MQTT_PASSWORD}
//	  groups: [plant1]              # default: every group (spBv1.0/#)
//	  reorder_timeout: 2s
//	  rebirth_min_interval: 5s
//	  persistent_session: false
//	  keep_alive: 30s
//	  connect_timeout: 10s
//	  max_payload_bytes: 1048576
//	  workers: 2
//	  tls: {ca_file: ..., cert_file: ..., key_file: ..., server_name: ..., insecure_skip_verify: false}
package sparkplug
