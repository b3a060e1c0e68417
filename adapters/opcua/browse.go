package opcua

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

// BrowseOptions are the settings of `shopfloor browse`, one per flag.
type BrowseOptions struct {
	Endpoint       string
	SecurityPolicy string // None (default), Basic256Sha256, ...
	SecurityMode   string // Sign, SignAndEncrypt; default by policy
	AuthMethod     string // anonymous, username, certificate
	Username       string
	Password       config.Secret
	CertFile       string // user certificate for certificate login
	KeyFile        string
	// DataDir holds the application certificate and trust list
	// (DataDir/opcua), the same as the agent's so a trusted server stays
	// trusted.
	DataDir         string
	TrustOnFirstUse bool
	// StartNode is where the walk starts; empty means the Objects folder,
	// and paths are then written from the Root ("Objects/...").
	StartNode string
	// MaxDepth bounds the walk; 0 means 6 levels.
	MaxDepth int
	// Timeout bounds connecting and each request; 0 means 10s.
	Timeout time.Duration
	Logger  *slog.Logger
}

// BrowsedNode is one node of the walked tree.
type BrowsedNode struct {
	ID       string
	Path     string // from the Root, "Objects/Machines/cnc-01/State"
	Name     string
	Class    ua.NodeClass
	DataType string
	Depth    int
}

// Browse walks a server's address space, writes the tree with data types
// to tree and a progress line to progress (either may be nil), and
// returns a complete agent config that reads every variable found, with
// canonical mappings for the names it recognises.
func Browse(ctx context.Context, opts BrowseOptions, tree io.Writer, progress io.Writer) ([]byte, error) {
	if tree == nil {
		tree = io.Discard
	}
	if progress == nil {
		progress = io.Discard
	}
	if opts.MaxDepth <= 0 {
		opts.MaxDepth = 6
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultConnectTimeout
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg := opts.config()
	cfg.Nodes = []Node{{Path: "Objects"}} // Validate wants one
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c, err := dial(ctx, cfg, newPKI(opts.DataDir, logger), logger, nil)
	if err != nil {
		return nil, fmt.Errorf("opcua %s: %w", opts.Endpoint, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		_ = c.Close(cctx)
	}()

	start := ua.NewNumericNodeID(0, id.ObjectsFolder)
	prefix := "Objects"
	if opts.StartNode != "" {
		if start, err = ua.ParseNodeID(opts.StartNode); err != nil {
			return nil, fmt.Errorf("start node %q: %w", opts.StartNode, err)
		}
		prefix = ""
	}
	lim := readLimits(ctx, c, 0)
	br := newBrowser(c, lim.browse)
	var nodes []BrowsedNode
	type level struct {
		id   *ua.NodeID
		path string
	}
	front := []level{{start, prefix}}
	for depth := 1; depth <= opts.MaxDepth && len(front) > 0; depth++ {
		ids := make([]*ua.NodeID, len(front))
		for i, f := range front {
			ids[i] = f.id
		}
		kids, err := br.children(ctx, ids)
		if err != nil {
			return nil, fmt.Errorf("opcua %s: browse: %w", opts.Endpoint, err)
		}
		var next []level
		for i, cs := range kids {
			for _, ch := range cs {
				// The Server object is the server's own diagnostics,
				// hundreds of nodes of no use for machine data.
				if ch.id.Namespace() == 0 && ch.id.IntID() == id.Server {
					continue
				}
				p := escapeName(ch.name)
				if front[i].path != "" {
					p = front[i].path + "/" + p
				}
				nodes = append(nodes, BrowsedNode{ID: ch.id.String(), Path: p, Name: ch.name, Class: ch.class, Depth: depth})
				if ch.class == ua.NodeClassObject {
					next = append(next, level{ch.id, p})
				}
			}
		}
		fmt.Fprintf(progress, "\rbrowsed %d nodes, depth %d of at most %d", len(nodes), depth, opts.MaxDepth)
		front = next
	}
	fmt.Fprintln(progress)
	if err := readDataTypes(ctx, c, lim.read, nodes); err != nil {
		return nil, fmt.Errorf("opcua %s: %w", opts.Endpoint, err)
	}
	sort.SliceStable(nodes, func(i, j int) bool { return nodes[i].Path < nodes[j].Path })
	for _, n := range nodes {
		indent := strings.Repeat("  ", strings.Count(n.Path, "/")-strings.Count(prefix, "/"))
		if n.Class == ua.NodeClassVariable {
			fmt.Fprintf(tree, "%s%s  [%s]  %s\n", indent, n.Name, n.DataType, n.ID)
		} else {
			fmt.Fprintf(tree, "%s%s/  %s\n", indent, n.Name, n.ID)
		}
	}
	return snippet(opts, nodes), nil
}

func (o BrowseOptions) config() Config {
	return Config{
		Endpoint:        o.Endpoint,
		SecurityPolicy:  o.SecurityPolicy,
		SecurityMode:    o.SecurityMode,
		Auth:            Auth{Method: o.AuthMethod, Username: o.Username, Password: o.Password, CertFile: o.CertFile, KeyFile: o.KeyFile},
		TrustOnFirstUse: o.TrustOnFirstUse,
		ConnectTimeout:  o.Timeout,
		RequestTimeout:  o.Timeout,
	}
}

// builtinTypes names the data types of namespace 0 a variable usually has.
var builtinTypes = map[uint32]string{
	1: "Boolean", 2: "SByte", 3: "Byte", 4: "Int16", 5: "UInt16", 6: "Int32", 7: "UInt32",
	8: "Int64", 9: "UInt64", 10: "Float", 11: "Double", 12: "String", 13: "DateTime",
	14: "Guid", 15: "ByteString", 16: "XmlElement", 17: "NodeId", 18: "ExpandedNodeId",
	19: "StatusCode", 20: "QualifiedName", 21: "LocalizedText", 22: "Structure",
	24: "BaseDataType", 26: "Number", 27: "Integer", 28: "UInteger", 29: "Enumeration",
	290: "Duration", 294: "UtcTime", 852: "ServerState",
}

func readDataTypes(ctx context.Context, c interface {
	Read(context.Context, *ua.ReadRequest) (*ua.ReadResponse, error)
}, per int, nodes []BrowsedNode) error {
	var idx []int
	for i, n := range nodes {
		if n.Class == ua.NodeClassVariable {
			idx = append(idx, i)
		}
	}
	per = max(1, per)
	for start := 0; start < len(idx); start += per {
		batch := idx[start:min(len(idx), start+per)]
		req := &ua.ReadRequest{}
		for _, i := range batch {
			nid, _ := ua.ParseNodeID(nodes[i].ID)
			req.NodesToRead = append(req.NodesToRead,
				&ua.ReadValueID{NodeID: nid, AttributeID: ua.AttributeIDDataType, DataEncoding: &ua.QualifiedName{}},
				&ua.ReadValueID{NodeID: nid, AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{}})
		}
		res, err := c.Read(ctx, req)
		if err != nil {
			return fmt.Errorf("read data types: %w", err)
		}
		for j, i := range batch {
			nodes[i].DataType = "?"
			if 2*j+1 >= len(res.Results) {
				continue
			}
			nodes[i].DataType = typeName(res.Results[2*j], res.Results[2*j+1])
		}
	}
	return nil
}

// typeName names a variable's type from its DataType attribute, or, for
// a server that fills that attribute poorly, from the value it holds.
func typeName(dt, val *ua.DataValue) string {
	var nid *ua.NodeID
	if dt != nil && dt.Value != nil {
		switch v := dt.Value.Value().(type) {
		case *ua.NodeID:
			nid = v
		case *ua.ExpandedNodeID:
			nid = v.NodeID
		}
	}
	array := ""
	if val != nil && val.Value != nil && val.Value.Value() != nil && isSlice(val.Value.Value()) {
		array = "[]"
	}
	if nid != nil {
		if name, ok := builtinTypes[nid.IntID()]; ok && nid.Namespace() == 0 {
			return name + array
		}
		if nid.Namespace() != 0 {
			return nid.String() + array
		}
	}
	if val != nil && val.Value != nil && val.Value.Type() != ua.TypeIDNull {
		if name, ok := builtinTypes[uint32(val.Value.Type())]; ok {
			return name + array
		}
	}
	if nid != nil {
		return nid.String() + array
	}
	return "?"
}

// knownSignals maps variable names used by umati (OPC 40501), OPC 40010
// robotics, the shopfloor simulator and common vendors to canonical
// signals.
var knownSignals = map[string]string{
	"State": collector.SignalState, "MachineState": collector.SignalState, "OperationMode": collector.SignalState,
	"SpindleSpeed": collector.SignalSpindleSpeed, "ActualSpindleSpeed": collector.SignalSpindleSpeed,
	"SpindleLoad": collector.SignalSpindleLoad, "SpindleOverride": collector.SignalFeedOverride,
	"FeedOverride": collector.SignalFeedOverride, "FeedRate": collector.SignalFeedRate, "ActualFeedRate": collector.SignalFeedRate,
	"PartCountGood": collector.SignalPartCountGood, "GoodParts": collector.SignalPartCountGood, "PartsProduced": collector.SignalPartCountGood,
	"PartCountReject": collector.SignalPartCountReject, "BadParts": collector.SignalPartCountReject, "RejectedParts": collector.SignalPartCountReject,
	"PowerActive": collector.SignalPower, "ActivePower": collector.SignalPower, "Power": collector.SignalPower,
	"EnergyTotal": collector.SignalEnergy, "ActiveEnergy": collector.SignalEnergy, "Energy": collector.SignalEnergy,
	"ProgramName": collector.SignalProgram, "ActiveProgram": collector.SignalProgram, "Program": collector.SignalProgram,
	"LastCycleTime": collector.SignalCycleTime, "CycleTime": collector.SignalCycleTime,
	"AlarmCode": collector.SignalAlarmCode, "AlarmText": collector.SignalAlarmText, "AlarmMessage": collector.SignalAlarmText,
	"Temperature": collector.SignalTemperature,
	"TcpSpeed":    collector.SignalTCPSpeed, "TCPSpeed": collector.SignalTCPSpeed,
	"Payload": collector.SignalPayload, "PayloadMass": collector.SignalPayload,
	"CycleCount": collector.SignalCycleCount, "CycleCounter": collector.SignalCycleCount,
}

// perAxisSignals are arrays whose elements are one canonical signal per
// axis; the source names them <signal>_1, <signal>_2, ...
var perAxisSignals = map[string]string{
	"JointTorques": collector.SignalJointTorque, "JointTorque": collector.SignalJointTorque, "MotorTorques": collector.SignalJointTorque,
}

// snippet writes a complete agent config reading every variable found.
// Variables whose folders are siblings ("Objects/Machines/cnc-01",
// "Objects/Machines/cnc-02") are read by one pattern with * for the
// machine, and that level becomes the machine in the asset template.
func snippet(opts BrowseOptions, nodes []BrowsedNode) []byte {
	type key struct{ parent, name string }
	folders := map[string]map[string]bool{} // grandparent -> machine folders holding variables
	var vars []key
	for _, n := range nodes {
		if n.Class != ua.NodeClassVariable {
			continue
		}
		dir, name := splitLast(n.Path)
		gp, folder := splitLast(dir)
		if folders[gp] == nil {
			folders[gp] = map[string]bool{}
		}
		folders[gp][folder] = true
		vars = append(vars, key{dir, name})
	}
	var paths []string
	seen := map[string]bool{}
	for _, v := range vars {
		gp, _ := splitLast(v.parent)
		p := v.parent + "/" + v.name
		if len(folders[gp]) > 1 {
			p = gp + "/*/" + v.name
		}
		if !seen[p] {
			seen[p] = true
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	var templates []string
	for gp := range folders {
		if gp != "" {
			templates = append(templates, gp+"/{machine}")
		}
	}
	sort.Strings(templates)

	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by `shopfloor browse --endpoint %s`.\n", opts.Endpoint)
	b.WriteString("# Check it with `shopfloor check --config <file>`; review the mappings and units.\n")
	b.WriteString("agent:\n  data_dir: ${SHOPFLOOR_DATA_DIR:-./data}\n  http:\n    listen: ${SHOPFLOOR_HTTP:-127.0.0.1:9180}\n\n")
	b.WriteString("sources:\n  - name: opcua\n    opcua:\n")
	fmt.Fprintf(&b, "      endpoint: %s\n", yamlString(opts.Endpoint))
	if opts.SecurityPolicy != "" && opts.SecurityPolicy != PolicyNone {
		fmt.Fprintf(&b, "      security_policy: %s\n", opts.SecurityPolicy)
		if opts.SecurityMode != "" {
			fmt.Fprintf(&b, "      security_mode: %s\n", opts.SecurityMode)
		}
	}
	if opts.Username != "" {
		fmt.Fprintf(&b, "      auth:\n        username: %s\n        password: ${OPCUA_PASSWORD}\n", yamlString(opts.Username))
	}
	b.WriteString("      nodes:\n")
	for _, p := range paths {
		_, name := splitLast(p)
		fmt.Fprintf(&b, "        - path: %s\n", yamlString(p))
		if opts.StartNode != "" {
			fmt.Fprintf(&b, "          start_node: %s\n", yamlString(opts.StartNode))
		}
		if sig, ok := perAxisSignals[unescape(name)]; ok {
			fmt.Fprintf(&b, "          signal: %s\n", sig)
		}
	}
	if len(paths) == 0 {
		b.WriteString("        - path: \"Objects/*\" # no variables found within the depth limit\n")
	}
	b.WriteString("    asset:\n")
	if len(templates) > 0 {
		b.WriteString("      from_origin:\n")
		for _, t := range templates {
			fmt.Fprintf(&b, "        - %s\n", yamlString(t))
		}
	} else {
		b.WriteString("      machine: machine-01\n")
	}
	var mapped []string
	mseen := map[string]bool{}
	for _, p := range paths {
		_, name := splitLast(p)
		name = unescape(name)
		if sig, ok := knownSignals[name]; ok && !mseen[name] {
			mseen[name] = true
			mapped = append(mapped, fmt.Sprintf("      - {match: %s, signal: %s}\n", yamlString(globEscape(name)), sig))
		}
	}
	if len(mapped) > 0 {
		b.WriteString("    mapping:\n")
		for _, m := range mapped {
			b.WriteString(m)
		}
	}
	b.WriteString("\nsink:\n  influxdb:\n    url: ${INFLUX_URL:-http://127.0.0.1:8086}\n    token: ${INFLUX_TOKEN:-}\n    org: ${INFLUX_ORG:-shopfloor}\n    bucket: ${INFLUX_BUCKET:-shopfloor}\n")
	return b.Bytes()
}

// splitLast splits a path at its last unescaped "/".
func splitLast(p string) (dir, last string) {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' && (i == 0 || p[i-1] != '\\') {
			return p[:i], p[i+1:]
		}
	}
	return "", p
}

func globEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`)
	return r.Replace(s)
}

// yamlString quotes s as a YAML double-quoted scalar when it needs it.
func yamlString(s string) string {
	if s != "" && !strings.ContainsAny(s, ":#{}[],&*!|>'\"%@`\\") && strings.TrimSpace(s) == s && !strings.HasPrefix(s, "-") && !strings.HasPrefix(s, "?") {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case '\n':
			b.WriteString(`\n`)
		default:
			if r < 0x20 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
