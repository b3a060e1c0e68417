package simulator

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"

	agent "github.com/noordoostpolder/shopfloor/adapters/opcua"
	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

const machinesNS = "urn:noordoostpolder:shopfloor:simulator:machines"

// clientCert makes a self-signed OPC UA application certificate for a
// test client.
func clientCert(t *testing.T, appURI string) ([]byte, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(appURI)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "simulator test client"},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment |
			x509.KeyUsageContentCommitment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{u},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// startSimulator serves one CNC and one robot, an hour into their run.
func startSimulator(t *testing.T, ctx context.Context) (*OPCUAServer, *Fleet) {
	t.Helper()
	fleet, err := NewFleet(Config{CNCs: 1, Robots: 1, Start: t0}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewOPCUAServer(ctx, OPCUAConfig{Dir: t.TempDir()}, fleet.Machines)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	for _, m := range fleet.Machines {
		if err := srv.Publish(ctx, m, m.Advance(t0.Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
	}
	return srv, fleet
}

// secureEndpoint is the simulator's Basic256Sha256 endpoint in mode.
func secureEndpoint(t *testing.T, ctx context.Context, endpoint string, mode ua.MessageSecurityMode) *ua.EndpointDescription {
	t.Helper()
	eps, err := opcua.GetEndpoints(ctx, endpoint)
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range eps {
		if ep.SecurityPolicyURI == ua.SecurityPolicyURIBasic256Sha256 && ep.SecurityMode == mode {
			return ep
		}
	}
	t.Fatalf("no Basic256Sha256 %s endpoint among %d", mode, len(eps))
	return nil
}

// TestOPCUASecureSessions opens Basic256Sha256 sessions, Sign and
// SignAndEncrypt, anonymous and with a user name, with gopcua's client,
// reads a machine variable and gets a data change through a
// subscription.
func TestOPCUASecureSessions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, fleet := startSimulator(t, ctx)
	cnc := fleet.Machines[0]
	const appURI = "urn:noordoostpolder:shopfloor:simulator-test"
	cert, key := clientCert(t, appURI)

	// Each session sees its own later state of the CNC.
	at := t0.Add(time.Hour)
	for _, mode := range []ua.MessageSecurityMode{ua.MessageSecurityModeSign, ua.MessageSecurityModeSignAndEncrypt} {
		for _, login := range []ua.UserTokenType{ua.UserTokenTypeAnonymous, ua.UserTokenTypeUserName} {
			t.Run(fmt.Sprintf("%s/%s", mode, login), func(t *testing.T) {
				ep := secureEndpoint(t, ctx, srv.Endpoint(), mode)
				auth := opcua.AuthAnonymous()
				if login == ua.UserTokenTypeUserName {
					auth = opcua.AuthUsername("operator", "s3cret")
				}
				tap := newTap(t, srv.Endpoint())
				c, err := opcua.NewClient(tap.endpoint,
					opcua.ApplicationURI(appURI),
					opcua.Certificate(cert),
					opcua.PrivateKey(key),
					opcua.SecurityPolicy("Basic256Sha256"),
					opcua.SecurityMode(mode),
					auth,
					opcua.SecurityFromEndpoint(ep, login),
					opcua.AutoReconnect(false),
				)
				if err != nil {
					t.Fatal(err)
				}
				cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
				defer ccancel()
				if err := c.Connect(cctx); err != nil {
					t.Fatalf("connect: %v", err)
				}
				defer c.Close(context.Background())

				ns, err := c.FindNamespace(ctx, machinesNS)
				if err != nil {
					t.Fatal(err)
				}
				state := ua.NewStringNodeID(ns, "cnc-01.State")
				energy := ua.NewStringNodeID(ns, "cnc-01.EnergyTotal")
				resp, err := c.Read(ctx, &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{
					{NodeID: state, AttributeID: ua.AttributeIDValue},
					{NodeID: energy, AttributeID: ua.AttributeIDValue},
				}})
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				want := cnc.Advance(at)
				if got := resp.Results[0]; got.Status != ua.StatusOK || got.Value.String() != want.State {
					t.Errorf("State = %v (%s), want %q", got.Value.Value(), got.Status, want.State)
				}
				if got := resp.Results[1]; got.Status != ua.StatusOK || got.Value.Value() != want.EnergyTotal {
					t.Errorf("EnergyTotal = %v (%s), want %v", got.Value.Value(), got.Status, want.EnergyTotal)
				}

				notes := make(chan *opcua.PublishNotificationData, 16)
				sub, err := c.Subscribe(ctx, &opcua.SubscriptionParameters{Interval: 50 * time.Millisecond}, notes)
				if err != nil {
					t.Fatalf("subscribe: %v", err)
				}
				defer sub.Cancel(context.Background())
				mr, err := sub.Monitor(ctx, ua.TimestampsToReturnBoth, opcua.NewMonitoredItemCreateRequestWithDefaults(energy, ua.AttributeIDValue, 1))
				if err != nil || mr.Results[0].StatusCode != ua.StatusOK {
					t.Fatalf("monitor: %v %v", err, mr)
				}

				// The node ids travel in the clear when only signed, never
				// when encrypted.
				if plain := tap.sent("cnc-01.EnergyTotal"); plain != (mode == ua.MessageSecurityModeSign) {
					t.Errorf("node id readable on the wire: %v, in mode %s", plain, mode)
				}

				// Two hours on the CNC has used energy: the value changes.
				at = at.Add(2 * time.Hour)
				next := cnc.Advance(at)
				if next.EnergyTotal == want.EnergyTotal {
					t.Fatalf("EnergyTotal did not change in two simulated hours")
				}
				if err := srv.Publish(ctx, cnc, next); err != nil {
					t.Fatal(err)
				}
				deadline := time.After(10 * time.Second)
				for {
					select {
					case n := <-notes:
						if n.Error != nil {
							t.Fatalf("notification: %v", n.Error)
						}
						if dc, ok := n.Value.(*ua.DataChangeNotification); ok {
							for _, item := range dc.MonitoredItems {
								if item.ClientHandle == 1 && item.Value.Value.Value() == next.EnergyTotal {
									return
								}
							}
						}
					case <-deadline:
						t.Fatalf("no data change to EnergyTotal %v within 10s", next.EnergyTotal)
					}
				}
			})
		}
	}
}

// tap relays TCP to an OPC UA endpoint and keeps what the client sent.
type tap struct {
	endpoint string
	mu       sync.Mutex
	fromC    bytes.Buffer
}

func newTap(t *testing.T, target string) *tap {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{endpoint: "opc.tcp://" + l.Addr().String()}
	var conns sync.WaitGroup
	t.Cleanup(func() { l.Close(); conns.Wait() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", u.Host)
			if err != nil {
				c.Close()
				continue
			}
			conns.Add(2)
			go func() { defer conns.Done(); io.Copy(c, s); c.Close() }()
			go func() { defer conns.Done(); io.Copy(tapWriter{tp, s}, c); s.Close() }()
		}
	}()
	return tp
}

type tapWriter struct {
	tp *tap
	w  io.Writer
}

func (w tapWriter) Write(p []byte) (int, error) {
	w.tp.mu.Lock()
	w.tp.fromC.Write(p)
	w.tp.mu.Unlock()
	return w.w.Write(p)
}

// count is how many messages of type typ ("OPN", "MSG") the client sent,
// walking the OPC UA TCP framing.
func (tp *tap) count(typ string) int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	b, n := tp.fromC.Bytes(), 0
	for len(b) >= 8 {
		size := int(binary.LittleEndian.Uint32(b[4:8]))
		if size < 8 || size > len(b) {
			break
		}
		if string(b[:3]) == typ {
			n++
		}
		b = b[size:]
	}
	return n
}

// sent tells whether the client sent s in the clear.
func (tp *tap) sent(s string) bool {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return bytes.Contains(tp.fromC.Bytes(), []byte(s))
}

// TestOPCUASecureRejectsForgedOpen: a client that signs its
// OpenSecureChannel with a key that does not belong to the certificate it
// presents gets no channel.
func TestOPCUASecureRejectsForgedOpen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, _ := startSimulator(t, ctx)
	const appURI = "urn:noordoostpolder:shopfloor:simulator-test"
	cert, _ := clientCert(t, appURI)
	_, otherKey := clientCert(t, appURI)
	ep := secureEndpoint(t, ctx, srv.Endpoint(), ua.MessageSecurityModeSignAndEncrypt)
	c, err := opcua.NewClient(srv.Endpoint(),
		opcua.ApplicationURI(appURI),
		opcua.Certificate(cert),
		opcua.PrivateKey(otherKey),
		opcua.AuthAnonymous(),
		opcua.SecurityFromEndpoint(ep, ua.UserTokenTypeAnonymous),
		opcua.AutoReconnect(false),
	)
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	err = c.Connect(cctx)
	if err == nil {
		c.Close(context.Background())
		t.Fatal("connected with a forged OpenSecureChannel signature")
	}
	if cctx.Err() != nil {
		t.Errorf("the forged open was not refused but left to time out: %v", err)
	}

	// The server still serves honest clients.
	good, goodKey := clientCert(t, appURI)
	c2, err := opcua.NewClient(srv.Endpoint(), opcua.ApplicationURI(appURI), opcua.Certificate(good), opcua.PrivateKey(goodKey),
		opcua.AuthAnonymous(), opcua.SecurityFromEndpoint(ep, ua.UserTokenTypeAnonymous), opcua.AutoReconnect(false))
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Connect(ctx); err != nil {
		t.Fatalf("honest client after a forged one: %v", err)
	}
	c2.Close(context.Background())
}

// TestOPCUASecureAgent connects the agent's own OPC UA source to the
// simulator with Basic256Sha256: the server certificate is refused into
// rejected/ until the operator trusts it, then values flow over
// SignAndEncrypt with a user name; with trust on first use a Sign
// session connects at once.
func TestOPCUASecureAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, fleet := startSimulator(t, ctx)
	cnc := fleet.Machines[0]
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	const origin = "Objects/Machines/cnc-01"

	cfg := agent.Config{
		Endpoint:           srv.Endpoint(),
		SecurityPolicy:     agent.PolicyBasic256Sha256,
		SecurityMode:       agent.SecurityModeSignAndEncrypt,
		Auth:               agent.Auth{Method: agent.AuthUsername, Username: "operator", Password: "s3cret"},
		PublishingInterval: 50 * time.Millisecond,
		Nodes:              []agent.Node{{Path: "Objects/Machines/*/*"}},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	s, err := agent.New(cfg, dataDir, logger)
	if err != nil {
		t.Fatal(err)
	}
	// First contact: the simulator's certificate is unknown.
	rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
	err = s.Run(rctx, &collectortest.Output{})
	rcancel()
	if !errors.Is(err, agent.ErrUntrusted) {
		t.Fatalf("first Run = %v, want ErrUntrusted", err)
	}
	rejected, _ := filepath.Glob(filepath.Join(dataDir, "opcua", "rejected", "*.der"))
	if len(rejected) != 1 {
		t.Fatalf("rejected/ holds %v, want the simulator's certificate", rejected)
	}
	if err := os.Rename(rejected[0], filepath.Join(dataDir, "opcua", "trusted", filepath.Base(rejected[0]))); err != nil {
		t.Fatal(err)
	}

	out := &collectortest.Output{}
	collectortest.Start(t, s, out)
	want := cnc.Advance(t0.Add(time.Hour))
	waitSample(t, out, origin, "State", collector.String(want.State))
	waitSample(t, out, origin, "EnergyTotal", collector.Float(want.EnergyTotal))
	next := cnc.Advance(t0.Add(5 * time.Hour))
	if err := srv.Publish(ctx, cnc, next); err != nil {
		t.Fatal(err)
	}
	waitSample(t, out, origin, "EnergyTotal", collector.Float(next.EnergyTotal))

	// Trust on first use, Sign, anonymous: no operator step.
	tofu := cfg
	tofu.SecurityMode = agent.SecurityModeSign
	tofu.Auth = agent.Auth{Method: agent.AuthAnonymous}
	tofu.TrustOnFirstUse = true
	ts, err := agent.New(tofu, t.TempDir(), logger)
	if err != nil {
		t.Fatal(err)
	}
	tout := &collectortest.Output{}
	collectortest.Start(t, ts, tout)
	waitSample(t, tout, origin, "EnergyTotal", collector.Float(next.EnergyTotal))
}

func waitSample(t *testing.T, out *collectortest.Output, origin, signal string, want collector.Value) {
	t.Helper()
	collectortest.Eventually(t, 15*time.Second, func() error {
		var last *collector.Sample
		for _, b := range out.Batches() {
			if b.Origin != origin {
				continue
			}
			for i := range b.Samples {
				if b.Samples[i].Signal == signal {
					last = &b.Samples[i]
				}
			}
		}
		if errs := out.BadErrors(); last == nil {
			return fmt.Errorf("no %s|%s sample yet (%d batches, errors %v)", origin, signal, len(out.Batches()), errs)
		}
		if last.Value != want || last.Quality != collector.QualityGood {
			return fmt.Errorf("%s|%s = %s (%s), want %s", origin, signal, last.Value.Format(), last.Quality, want.Format())
		}
		return nil
	})
}
