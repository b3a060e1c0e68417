//go:build integration

package opcua

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// serverSubscriptions reads how many subscriptions the server holds
// (ServerDiagnosticsSummary/CurrentSubscriptionCount) over a session of
// its own, which holds none.
func serverSubscriptions(t *testing.T, cfg Config) (uint32, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cfg.SetDefaults()
	c, err := dial(ctx, cfg, newPKI(t.TempDir(), testLogger()), testLogger(), nil)
	if err != nil {
		return 0, err
	}
	defer c.Close(context.Background())
	res, err := c.Read(ctx, &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{
		NodeID:      ua.NewNumericNodeID(0, id.Server_ServerDiagnostics_ServerDiagnosticsSummary_CurrentSubscriptionCount),
		AttributeID: ua.AttributeIDValue,
	}}})
	if err != nil {
		return 0, err
	}
	if len(res.Results) != 1 || res.Results[0].Status != ua.StatusOK || res.Results[0].Value == nil {
		return 0, fmt.Errorf("CurrentSubscriptionCount: %+v", res.Results)
	}
	n, ok := res.Results[0].Value.Value().(uint32)
	if !ok {
		return 0, fmt.Errorf("CurrentSubscriptionCount is %T", res.Results[0].Value.Value())
	}
	return n, nil
}

// TestInteropNodeOPCUATakesOverSubscriptionAfterGap: the network between
// the source and node-opcua breaks for two seconds while the server runs
// on and keeps the source's session and subscription. After the
// reconnect the source takes that subscription over
// (TransferSubscriptions) and deletes it before it subscribes anew, so
// the server holds exactly one subscription of ours, not an orphan
// beside it until the old session times out, and values resume.
//
// Basic256Sha256 and a user name, since node-opcua, following Part 4
// 5.13.7, moves a subscription only to a session of the same user, and
// an anonymous one only over a Sign or SignAndEncrypt channel.
func TestInteropNodeOPCUATakesOverSubscriptionAfterGap(t *testing.T) {
	t.Parallel()
	endpoint := startNodeServer(t, "--secure", "--user", "operator", "--password", "s3cret")
	proxy := startProxy(t, strings.TrimPrefix(endpoint, "opc.tcp://"))
	direct := Config{
		Endpoint:        endpoint,
		SecurityPolicy:  PolicyBasic256Sha256,
		Auth:            Auth{Username: "operator", Password: "s3cret"},
		TrustOnFirstUse: true,
	}
	logs := &logRecorder{}
	s, err := New(Config{
		Endpoint:           proxy.endpoint(),
		SecurityPolicy:     PolicyBasic256Sha256,
		Auth:               Auth{Username: "operator", Password: "s3cret"},
		TrustOnFirstUse:    true,
		PublishingInterval: 100 * time.Millisecond,
		ConnectTimeout:     2 * time.Second,
		RequestTimeout:     2 * time.Second,
		WatchdogInterval:   time.Second,
		Backfill:           new(bool),
		Nodes:              []Node{{Path: "Objects/Machines/cnc-01/SpindleSpeed"}},
	}, t.TempDir(), logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	out := &timedOutput{Output: &collectortest.Output{}}
	supervise(t, s, out)
	const key = "Objects/Machines/cnc-01|SpindleSpeed"
	waitFor(t, out.Output, key, nil)
	if n, err := serverSubscriptions(t, direct); err != nil || n != 1 {
		t.Fatalf("server holds %d subscriptions (%v) before the gap, want 1", n, err)
	}

	proxy.cut(2 * time.Second)
	collectortest.Eventually(t, 15*time.Second, func() error {
		if len(out.upTimes()) < 2 {
			return fmt.Errorf("not reconnected yet")
		}
		return nil
	})
	reconnected := out.upTimes()[1]
	waitFor(t, out.Output, key, func(s collector.Sample) bool { return s.ReceiveTime.After(reconnected) })
	if n := logs.count("took over and deleted the subscription of an earlier session"); n != 1 {
		t.Errorf("took over the earlier subscription %d times, want once:\n%s", n, logs.String())
	}
	if n, err := serverSubscriptions(t, direct); err != nil || n != 1 {
		t.Errorf("server holds %d subscriptions (%v) after the gap, want exactly 1", n, err)
	}
}
