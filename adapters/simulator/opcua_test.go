package simulator

import (
	"context"
	"testing"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"
)

// TestOPCUAServerServesMachines reads a simulated machine's variables
// with an independent client library path (gopcua's client) over security
// None, and sees a value change arrive.
func TestOPCUAServerServesMachines(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fleet, err := NewFleet(Config{CNCs: 1, Robots: 1, Start: t0}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewOPCUAServer(ctx, OPCUAConfig{Dir: t.TempDir()}, fleet.Machines)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, m := range fleet.Machines {
		if err := srv.Publish(ctx, m, m.Advance(t0.Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
	}
	c, err := opcua.NewClient(srv.Endpoint(), opcua.SecurityMode(ua.MessageSecurityModeNone))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	read := func(node string) *ua.Variant {
		t.Helper()
		ns := c.Namespaces()
		idx := -1
		for i, n := range ns {
			if n == "urn:noordoostpolder:shopfloor:simulator:machines" {
				idx = i
			}
		}
		if idx < 0 {
			t.Fatalf("namespace missing in %v", ns)
		}
		resp, err := c.Read(ctx, &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{NodeID: ua.NewStringNodeID(uint16(idx), node), AttributeID: ua.AttributeIDValue}}})
		if err != nil || resp.Results[0].Status != ua.StatusOK {
			t.Fatalf("read %s: %v %v", node, err, resp)
		}
		return resp.Results[0].Value
	}
	if err := c.UpdateNamespaces(ctx); err != nil {
		t.Fatal(err)
	}
	cnc := fleet.Machines[0]
	v := cnc.Advance(t0.Add(time.Hour))
	if got := read("cnc-01.State").String(); got != v.State {
		t.Errorf("cnc-01 State = %q, want %q", got, v.State)
	}
	if got := read("cnc-01.PartCountGood").Value(); got != uint32(v.PartCountGood) {
		t.Errorf("cnc-01 PartCountGood = %v, want %d", got, v.PartCountGood)
	}
	if got, ok := read("robot-01.JointTorques").Value().([]float64); !ok || len(got) != 6 {
		t.Errorf("robot-01 JointTorques = %v, want 6 doubles", read("robot-01.JointTorques").Value())
	}
	v2 := cnc.Advance(t0.Add(3 * time.Hour))
	if err := srv.Publish(ctx, cnc, v2); err != nil {
		t.Fatal(err)
	}
	if got := read("cnc-01.EnergyTotal").Value().(float64); got != v2.EnergyTotal {
		t.Errorf("EnergyTotal after publish = %v, want %v", got, v2.EnergyTotal)
	}
}
