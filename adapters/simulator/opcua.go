package simulator

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/server/attrs"
	"github.com/gopcua/opcua/ua"
)

// ApplicationURI names the simulator's OPC UA server; it is in its
// certificate, as OPC UA requires.
const ApplicationURI = "urn:noordoostpolder:shopfloor:simulator"

// OPCUAConfig is where and how the simulator serves OPC UA.
type OPCUAConfig struct {
	// Host and Port to listen on; port 0 picks a free one.
	Host string
	Port int
	// Dir keeps the server's certificate and key, so a client that trusted
	// it once trusts it after a restart. Empty: a new one per start.
	Dir string
	// Logger receives the server's log; nil discards it. gopcua's server
	// logs printf-style and loudly (benign "duplicate reference" errors at
	// every start), so the demo and simulate leave it nil.
	Logger *slog.Logger
}

// OPCUAServer serves machines over OPC UA in an address space shaped like
// the umati machine tool companion specification:
// Objects/Machines/<machine>/<Variable>, with security None, and
// Basic256Sha256 with Sign or SignAndEncrypt, anonymous or username login
// (any user name and password). The server is gopcua's, behind a relay
// that works around its secure channel opening (see openRelay).
type OPCUAServer struct {
	srv      *server.Server
	relay    *openRelay
	ns       *server.NodeNameSpace
	endpoint string
	served   map[string]bool // machine names

	// values back the variables. gopcua reads a variable through a func
	// without a lock of its own, so the values are guarded here.
	mu     sync.Mutex
	values map[string]*ua.DataValue // "<machine>/<Variable>"
	nodes  map[string]*server.Node
}

// variables lists what a machine of a kind serves, with a zero value of
// the OPC UA type each has.
func variables(kind Kind) map[string]any {
	if kind == KindRobot {
		return map[string]any{"State": "", "ProgramName": "", "CycleCount": uint32(0), "PartCountGood": uint32(0),
			"TcpSpeed": 0.0, "Payload": 0.0, "JointTorques": make([]float64, 6), "PowerActive": 0.0, "EnergyTotal": 0.0, "AlarmCode": ""}
	}
	return map[string]any{"State": "", "ProgramName": "", "PartCountGood": uint32(0), "PartCountReject": uint32(0),
		"SpindleSpeed": 0.0, "SpindleLoad": 0.0, "FeedOverride": 0.0, "PowerActive": 0.0, "EnergyTotal": 0.0,
		"LastCycleTime": 0.0, "Temperature": 0.0, "AlarmCode": "", "AlarmText": ""}
}

func (v Values) opcua(kind Kind) map[string]any {
	out := map[string]any{"State": v.State, "ProgramName": v.Program, "PartCountGood": uint32(v.PartCountGood),
		"PowerActive": v.PowerActive, "EnergyTotal": v.EnergyTotal, "AlarmCode": v.AlarmCode}
	if kind == KindRobot {
		out["CycleCount"] = uint32(v.CycleCount)
		out["TcpSpeed"], out["Payload"] = v.TcpSpeed, v.Payload
		out["JointTorques"] = append([]float64(nil), v.JointTorques[:]...)
		return out
	}
	out["PartCountReject"] = uint32(v.PartCountReject)
	out["SpindleSpeed"], out["SpindleLoad"], out["FeedOverride"] = v.SpindleSpeed, v.SpindleLoad, v.FeedOverride
	out["LastCycleTime"], out["Temperature"], out["AlarmText"] = v.LastCycleTime, v.Temperature, v.AlarmText
	return out
}

func folder(nid *ua.NodeID, name string) *server.Node {
	return server.NewNode(nid, map[ua.AttributeID]*ua.DataValue{
		ua.AttributeIDNodeClass:   server.DataValueFromValue(uint32(ua.NodeClassObject)),
		ua.AttributeIDBrowseName:  server.DataValueFromValue(attrs.BrowseName(name)),
		ua.AttributeIDDisplayName: server.DataValueFromValue(attrs.DisplayName(name, name)),
		// gopcua's server leaves references without a type definition out
		// of Browse results; FolderType gives them one.
		ua.AttributeIDDataType: server.DataValueFromValue(ua.NewNumericExpandedNodeID(0, id.FolderType)),
	}, nil, nil)
}

// NewOPCUAServer starts serving machines.
func NewOPCUAServer(ctx context.Context, cfg OPCUAConfig, machines []Placed) (*OPCUAServer, error) {
	host := cfg.Host
	if host == "" {
		host = "127.0.0.1"
	}
	cert, key, err := serverCertificate(cfg.Dir, host)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// Clients connect to the relay (see openRelay) on the public address;
	// gopcua's server listens on loopback behind it. It listens on its
	// first endpoint and advertises both, but answers GetEndpoints and
	// CreateSession with the endpoints of the URL the client asked for,
	// so clients see only the public one.
	public, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(cfg.Port)))
	if err != nil {
		return nil, err
	}
	port := public.Addr().(*net.TCPAddr).Port
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		public.Close()
		return nil, err
	}
	innerPort := inner.Addr().(*net.TCPAddr).Port
	inner.Close()
	srv := server.New(
		server.SetLogger(logger),
		server.EndPoint("127.0.0.1", innerPort),
		server.EndPoint(host, port),
		server.Certificate(cert),
		server.PrivateKey(key),
		server.ServerName("shopfloor simulator"),
		server.ProductName("shopfloor simulator"),
		server.EnableSecurity("None", ua.MessageSecurityModeNone),
		server.EnableSecurity("Basic256Sha256", ua.MessageSecurityModeSign),
		server.EnableSecurity("Basic256Sha256", ua.MessageSecurityModeSignAndEncrypt),
		server.EnableAuthMode(ua.UserTokenTypeAnonymous),
		server.EnableAuthMode(ua.UserTokenTypeUserName),
	)
	s := &OPCUAServer{srv: srv, served: map[string]bool{}, values: map[string]*ua.DataValue{}, nodes: map[string]*server.Node{},
		endpoint: fmt.Sprintf("opc.tcp://%s", net.JoinHostPort(host, fmt.Sprint(port)))}
	ns := server.NewNodeNameSpace(srv, "urn:noordoostpolder:shopfloor:simulator:machines")
	s.ns = ns
	root, _ := srv.Namespace(0)
	folderNode := ns.AddNode(folder(ua.NewStringNodeID(ns.ID(), "Machines"), "Machines"))
	root.Objects().AddRef(folderNode, id.Organizes, true)
	for _, m := range machines {
		s.served[m.Name] = true
		mf := ns.AddNode(folder(ua.NewStringNodeID(ns.ID(), m.Name), m.Name))
		folderNode.AddRef(mf, id.Organizes, true)
		for name, zero := range variables(m.Kind) {
			key := m.Name + "/" + name
			s.values[key] = &ua.DataValue{EncodingMask: ua.DataValueValue | ua.DataValueSourceTimestamp | ua.DataValueServerTimestamp,
				Value: ua.MustVariant(zero), SourceTimestamp: time.Now(), ServerTimestamp: time.Now()}
			n := ns.AddNewVariableStringNode(m.Name+"."+name, func() *ua.DataValue {
				s.mu.Lock()
				defer s.mu.Unlock()
				d := *s.values[key]
				return &d
			})
			n.SetBrowseName(name)
			mf.AddRef(n, id.HasComponent, true)
			s.nodes[key] = n
		}
	}
	if err := srv.Start(ctx); err != nil {
		public.Close()
		return nil, fmt.Errorf("simulator: start OPC UA server on %s: %w", s.endpoint, err)
	}
	s.relay = newOpenRelay(public, net.JoinHostPort("127.0.0.1", fmt.Sprint(innerPort)), cert, key, logger)
	return s, nil
}

// Endpoint is the server's opc.tcp URL.
func (s *OPCUAServer) Endpoint() string { return s.endpoint }

// Close stops the server. gopcua's server waits up to ten seconds for
// clients' channels to end; Close gives it two, so a demo stops promptly.
func (s *OPCUAServer) Close() error {
	rerr := s.relay.Close()
	done := make(chan error, 1)
	go func() { done <- errors.Join(rerr, s.srv.Close()) }()
	select {
	case err := <-done:
		return err
	case <-time.After(2 * time.Second):
		return nil
	}
}

// Publish sets the variables of m and notifies the monitored items of
// those that changed. Machines the server does not serve are ignored.
func (s *OPCUAServer) Publish(_ context.Context, m Placed, v Values) error {
	if !s.served[m.Name] {
		return nil
	}
	var changed []*server.Node
	s.mu.Lock()
	for name, val := range v.opcua(m.Kind) {
		key := m.Name + "/" + name
		old := s.values[key]
		variant := ua.MustVariant(val)
		if old != nil && fmt.Sprint(old.Value.Value()) == fmt.Sprint(variant.Value()) {
			continue
		}
		s.values[key] = &ua.DataValue{EncodingMask: ua.DataValueValue | ua.DataValueSourceTimestamp | ua.DataValueServerTimestamp,
			Value: variant, SourceTimestamp: v.Time, ServerTimestamp: time.Now()}
		changed = append(changed, s.nodes[key])
	}
	s.mu.Unlock()
	for _, n := range changed {
		s.ns.ChangeNotification(n.ID())
	}
	return nil
}

// serverCertificate loads the server's certificate from dir, or makes one
// (and keeps it there when dir is set).
func serverCertificate(dir, host string) ([]byte, *rsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(dir, "server.der"), filepath.Join(dir, "server.key")
	if dir != "" {
		if der, err := os.ReadFile(certPath); err == nil {
			if kb, err := os.ReadFile(keyPath); err == nil {
				if blk, _ := pem.Decode(kb); blk != nil {
					if key, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
						return der, key, nil
					}
				}
			}
		}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	uri, _ := url.Parse(ApplicationURI)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "shopfloor simulator", Organization: []string{"shopfloor"}},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(5, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment |
			x509.KeyUsageContentCommitment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{uri},
		DNSNames:              []string{"localhost"},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, nil, err
		}
		kb := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
		if err := errors.Join(os.WriteFile(certPath, der, 0o644), os.WriteFile(keyPath, kb, 0o600)); err != nil {
			return nil, nil, err
		}
	}
	return der, key, nil
}
