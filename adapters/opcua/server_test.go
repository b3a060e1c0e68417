package opcua

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/server/attrs"
	"github.com/gopcua/opcua/ua"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// testServer is an in-process gopcua server serving the simulator's shape:
// Objects/Machines/<machine>/<variable>.
type testServer struct {
	t    testing.TB
	port int
	mu   sync.Mutex
	srv  *server.Server
	ns   *server.NodeNameSpace
	vars map[string]*server.Node // "cnc-01/SpindleSpeed" -> node
	// values hold the variables' values behind a lock of our own:
	// gopcua's server reads node attributes without one, so changing
	// them with SetAttribute while a notification reads is a data race.
	vmu    sync.Mutex
	values map[string]*ua.DataValue
	// machines maps machine -> variable -> initial value.
	machines map[string]map[string]any
	// historizing names variables ("cnc-01/SpindleSpeed") whose
	// Historizing attribute says true. gopcua's server has no
	// HistoryRead: it answers every one with a service fault, as a
	// server does whose history is switched off.
	historizing map[string]bool
	// proxyPorts are more ports the server names among its endpoints:
	// those of proxies in front of it. gopcua's server answers
	// GetEndpoints and CreateSession only for URLs it names.
	proxyPorts []int
}

func defaultMachines() map[string]map[string]any {
	return map[string]map[string]any{
		"cnc-01": {
			"State":           int32(1),
			"SpindleSpeed":    float64(12000),
			"SpindleLoad":     float32(41.5),
			"PartCountGood":   uint32(1834),
			"PartCountReject": int64(3),
			"ProgramName":     "O1234",
			"Running":         true,
		},
		"robot-01": {
			"TcpSpeed":     float64(250),
			"JointTorques": []float64{1, 2, 3, 4, 5, 6},
			"CycleCount":   uint64(42),
		},
	}
}

func startTestServer(t testing.TB, machines map[string]map[string]any) *testServer {
	t.Helper()
	ts := &testServer{t: t, port: collectortest.FreePort(t), machines: machines}
	ts.start()
	t.Cleanup(ts.stop)
	return ts
}

// startTestServerBehindProxy starts a test server that the returned
// proxy forwards to; the historizing variables ("cnc-01/SpindleSpeed")
// say they keep a history.
func startTestServerBehindProxy(t testing.TB, machines map[string]map[string]any, historizing ...string) (*testServer, *tcpProxy) {
	t.Helper()
	port := collectortest.FreePort(t)
	p := startProxy(t, fmt.Sprintf("127.0.0.1:%d", port))
	ts := &testServer{t: t, port: port, machines: machines, proxyPorts: []int{p.ln.Addr().(*net.TCPAddr).Port}, historizing: map[string]bool{}}
	for _, h := range historizing {
		ts.historizing[h] = true
	}
	ts.start()
	t.Cleanup(ts.stop)
	return ts, p
}

func (ts *testServer) endpoint() string { return fmt.Sprintf("opc.tcp://127.0.0.1:%d", ts.port) }

func folder(nid *ua.NodeID, name string) *server.Node {
	return server.NewNode(nid, map[ua.AttributeID]*ua.DataValue{
		ua.AttributeIDNodeClass:   server.DataValueFromValue(uint32(ua.NodeClassObject)),
		ua.AttributeIDBrowseName:  server.DataValueFromValue(attrs.BrowseName(name)),
		ua.AttributeIDDisplayName: server.DataValueFromValue(attrs.DisplayName(name, name)),
		// gopcua's server leaves references without a type definition
		// out of Browse results; FolderType gives them one.
		ua.AttributeIDDataType: server.DataValueFromValue(ua.NewNumericExpandedNodeID(0, id.FolderType)),
	}, nil, nil)
}

func (ts *testServer) start() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	opts := []server.Option{
		server.EndPoint("127.0.0.1", ts.port),
		server.EnableSecurity("None", ua.MessageSecurityModeNone),
		server.EnableAuthMode(ua.UserTokenTypeAnonymous),
	}
	for _, p := range ts.proxyPorts {
		opts = append(opts, server.EndPoint("127.0.0.1", p))
	}
	srv := server.New(opts...)
	ns := server.NewNodeNameSpace(srv, "shopfloor-test")
	root, _ := srv.Namespace(0)
	objects := root.Objects()
	machines := ns.AddNode(folder(ua.NewStringNodeID(ns.ID(), "Machines"), "Machines"))
	objects.AddRef(machines, id.Organizes, true)
	ts.vars = map[string]*server.Node{}
	for m, vars := range ts.machines {
		mf := ns.AddNode(folder(ua.NewStringNodeID(ns.ID(), m), m))
		machines.AddRef(mf, id.Organizes, true)
		for name, v := range vars {
			key := m + "/" + name
			ts.vmu.Lock()
			if ts.values == nil {
				ts.values = map[string]*ua.DataValue{}
			}
			if _, ok := ts.values[key]; !ok { // a restart keeps the last value
				ts.values[key] = &ua.DataValue{
					EncodingMask:    ua.DataValueValue | ua.DataValueSourceTimestamp,
					Value:           ua.MustVariant(v),
					SourceTimestamp: time.Now(),
				}
			}
			ts.vmu.Unlock()
			n := ns.AddNewVariableStringNode(m+"."+name, func() *ua.DataValue {
				ts.vmu.Lock()
				defer ts.vmu.Unlock()
				d := *ts.values[key]
				return &d
			})
			// AddNewVariableStringNode names the node by its id; the
			// browse name must be the plain variable name.
			n.SetBrowseName(name)
			if ts.historizing[key] {
				// gopcua v0.8.0 sets any attribute but Value and then
				// returns BadNodeAttributesInvalid all the same.
				_ = n.SetAttribute(ua.AttributeIDHistorizing, server.DataValueFromValue(true))
			}
			ts.vars[m+"/"+name] = n
			mf.AddRef(n, id.HasComponent, true)
		}
	}
	if err := srv.Start(context.Background()); err != nil {
		ts.t.Fatalf("start in-process OPC UA server: %v", err)
	}
	ts.srv, ts.ns = srv, ns
}

func (ts *testServer) stop() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.srv != nil {
		_ = ts.srv.Close()
		ts.srv = nil
	}
}

// restart stops the server and starts a fresh one (no sessions, no
// subscriptions) on the same port.
func (ts *testServer) restart() {
	ts.stop()
	ts.start()
}

// set changes a variable and notifies its monitored items.
func (ts *testServer) set(key string, v any, status ua.StatusCode) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	n := ts.vars[key]
	if n == nil {
		ts.t.Fatalf("no variable %s", key)
	}
	ts.vmu.Lock()
	ts.values[key] = &ua.DataValue{
		EncodingMask:    ua.DataValueValue | ua.DataValueSourceTimestamp | ua.DataValueStatusCode,
		Value:           ua.MustVariant(v),
		Status:          status,
		SourceTimestamp: time.Now(),
	}
	ts.vmu.Unlock()
	ts.ns.ChangeNotification(n.ID())
}

// subscriptions counts the subscriptions the server holds.
func (ts *testServer) subscriptions() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.srv == nil {
		return 0
	}
	ts.srv.SubscriptionService.Mu.Lock()
	defer ts.srv.SubscriptionService.Mu.Unlock()
	return len(ts.srv.SubscriptionService.Subs)
}
