//go:build integration

package opcua

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/noordoostpolder/shopfloor/adapters/influxdb"
	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// nodeServer starts testdata/nodeserver/server.js (node-opcua) and
// returns its endpoint. secure switches to Basic256Sha256
// SignAndEncrypt with user/password login only.
func nodeServer(t *testing.T, secure bool, user, password string) string {
	t.Helper()
	if secure {
		return startNodeServer(t, "--secure", "--user", user, "--password", password)
	}
	return startNodeServer(t)
}

// startNodeServer starts testdata/nodeserver/server.js with extra
// arguments (see its header) and returns its endpoint.
func startNodeServer(t testing.TB, extra ...string) string {
	t.Helper()
	return collectortest.NodeOPCUA(t, "testdata/nodeserver", extra...)
}

// examplePlusTypes is deploy/examples/opcua.yaml pointed at endpoint,
// with the types-01 folder added.
func examplePlusTypes(t *testing.T, endpoint string) agentSource {
	t.Helper()
	data, err := os.ReadFile("../../deploy/examples/opcua.yaml")
	if err != nil {
		t.Fatal(err)
	}
	src := loadAgentFile(t, "opcua.yaml", data, map[string]string{"OPCUA_ENDPOINT": endpoint}).Sources[0]
	src.OPCUA.Nodes = append(src.OPCUA.Nodes,
		// A percent deadband on a variable without an EURange: whether
		// the server takes it or refuses it (the source then monitors
		// without the filter), the value must arrive (field "double").
		Node{Path: "Objects/Machines/types-01/Double", Deadband: &Deadband{Type: DeadbandPercent, Value: 10}},
		Node{Path: "Objects/Machines/types-01/*"})
	src.OPCUA.PublishingInterval = 200 * time.Millisecond
	return src
}

// runPipeline runs src into a private InfluxDB and returns its URL and
// database.
func runPipeline(t *testing.T, src agentSource, dataDir string) (string, string) {
	t.Helper()
	influx := collectortest.Influx(t)
	collectortest.CreateDatabase(t, influx.URL(), "shopfloor")
	sink, err := influxdb.New(influxdb.Config{URL: influx.URL(), Bucket: "shopfloor/autogen"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(*src.OPCUA, dataDir, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	pc := collector.PipelineConfig{FlushInterval: 100 * time.Millisecond, RetryMin: 100 * time.Millisecond, RetryMax: time.Second}
	pc.Queue.Dir = filepath.Join(t.TempDir(), "queue")
	pc.DeadLetterDir = filepath.Join(t.TempDir(), "dead")
	pc.SetDefaults()
	p, err := collector.NewPipeline(pc,
		[]collector.SourceSpec{{Name: "opcua", Source: s, Normalize: collector.NormalizeConfig{Asset: src.Asset, Mapping: src.Mapping}}},
		collector.SinkSpec{Name: "influxdb", Sink: sink}, collector.NewMetrics(prometheus.NewRegistry()), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return influx.URL(), "shopfloor"
}

// fieldTypes returns the InfluxDB type of every field of measurement
// machine.
func fieldTypes(url, db string) (map[string]string, error) {
	res, err := collectortest.QueryErr(url, db, "SHOW FIELD KEYS FROM machine")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, s := range res {
		for _, row := range s.Values {
			out[fmt.Sprint(row[0])] = fmt.Sprint(row[1])
		}
	}
	return out, nil
}

// wantFields is every data type of the issue, as it must arrive.
var wantFields = map[string]string{
	// the simulator's shape, through the example's mapping rules
	"state":             "string",
	"spindle_speed_rpm": "float",
	"spindle_load_pct":  "float",
	"feed_override_pct": "float",
	"part_count_good":   "integer",
	"part_count_reject": "integer",
	"power_w":           "float",
	"temperature_c":     "float",
	"energy_wh":         "float",
	"program":           "string",
	"cycle_time_s":      "float",
	"tcp_speed_mm_s":    "float",
	"joint_torque_nm_1": "float",
	"joint_torque_nm_6": "float",
	"cycle_count":       "integer",
	// one per built-in type, passed through under sanitised names
	"boolean":          "boolean",
	"sbyte":            "integer",
	"byte":             "integer",
	"int16":            "integer",
	"uint16":           "integer",
	"int32":            "integer",
	"uint32":           "integer",
	"int64":            "integer",
	"uint64":           "integer",
	"float":            "float",
	"double":           "float",
	"string":           "string",
	"datetime":         "string",
	"guid":             "string",
	"bytestring":       "string",
	"nodeid":           "string",
	"statuscode":       "integer",
	"qualifiedname":    "string",
	"localizedtext":    "string",
	"mode":             "string",
	"broken_quality":   "string",
	"doubtful":         "float",
	"doubtful_quality": "string",
}

// wantValues are exact values checked after the types.
var wantValues = []struct{ machine, field, want string }{
	{"cnc-01", "state", "running"},
	{"cnc-01", "program", "O1234"},
	{"cnc-01", "part_count_good", "1834"},
	{"robot-01", "joint_torque_nm_3", "3.5"},
	{"robot-01", "cycle_count", "42"},
	{"types-01", "int64", "4294967298"},
	{"types-01", "uint32", "4000000000"},
	{"types-01", "datetime", "2024-03-05T14:30:00Z"},
	{"types-01", "guid", "72962B91-FA75-4AE6-8D28-B404DC7DAF63"},
	{"types-01", "bytestring", "cafe"},
	{"types-01", "localizedtext", "Hallo"},
	{"types-01", "mode", "Service"},
	{"types-01", "broken_quality", "bad"},
	{"types-01", "doubtful_quality", "uncertain"},
}

func checkInflux(t *testing.T, url, db string) {
	t.Helper()
	collectortest.Eventually(t, 30*time.Second, func() error {
		got, err := fieldTypes(url, db)
		if err != nil {
			return err
		}
		var bad []string
		for f, typ := range wantFields {
			if got[f] != typ {
				bad = append(bad, fmt.Sprintf("%s=%q want %q", f, got[f], typ))
			}
		}
		if _, ok := got["broken"]; ok {
			bad = append(bad, "broken has a value field; a Bad reading must be quality only")
		}
		if len(bad) > 0 {
			return fmt.Errorf("fields not right yet: %s (have %v)", strings.Join(bad, "; "), got)
		}
		return nil
	})
	// The values are polled too: once, under load, the fields were
	// listed while every LAST below still came back empty.
	collectortest.Eventually(t, 30*time.Second, func() error {
		var bad []string
		for _, w := range wantValues {
			got, err := collectortest.LastValue(url, db, w.machine, w.field)
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s %s: %v", w.machine, w.field, err))
			} else if !strings.EqualFold(got, w.want) {
				bad = append(bad, fmt.Sprintf("%s %s = %s, want %s", w.machine, w.field, got, w.want))
			}
		}
		// Temperature is an AnalogItem whose EngineeringUnits say °F;
		// the mapping rule names no unit, so the source's unit is
		// converted.
		got, err := collectortest.LastValue(url, db, "cnc-01", "temperature_c")
		if err != nil {
			bad = append(bad, fmt.Sprintf("cnc-01 temperature_c: %v", err))
		} else if c, err := strconv.ParseFloat(got, 64); err != nil || math.Abs(c-100) > 1e-9 {
			bad = append(bad, fmt.Sprintf("cnc-01 temperature_c = %s, want 100 (212 °F converted)", got))
		}
		if len(bad) > 0 {
			return errors.New(strings.Join(bad, "; "))
		}
		return nil
	})
}

func TestInteropNodeOPCUASecurityNone(t *testing.T) {
	endpoint := nodeServer(t, false, "", "")
	src := examplePlusTypes(t, endpoint)
	url, db := runPipeline(t, src, t.TempDir())
	checkInflux(t, url, db)
}

func TestInteropNodeOPCUABasic256Sha256UserPassword(t *testing.T) {
	endpoint := nodeServer(t, true, "operator", "s3cret")
	src := examplePlusTypes(t, endpoint)
	src.OPCUA.SecurityPolicy = PolicyBasic256Sha256
	src.OPCUA.SecurityMode = SecurityModeSignAndEncrypt
	src.OPCUA.Auth = Auth{Username: "operator", Password: "s3cret"}
	src.OPCUA.Auth.Method = ""
	src.OPCUA.SetDefaults()
	dataDir := t.TempDir()

	// First contact: the server's certificate is unknown, so it lands in
	// rejected/ and the connection is refused with a hint.
	s, err := New(*src.OPCUA, dataDir, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	out := &collectortest.Output{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = s.Run(ctx, out)
	if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), "trusted") {
		t.Fatalf("first Run = %v, want ErrUntrusted telling how to trust", err)
	}
	rejected, _ := filepath.Glob(filepath.Join(dataDir, "opcua", "rejected", "*.der"))
	if len(rejected) != 1 {
		t.Fatalf("rejected/ holds %v, want the server's certificate", rejected)
	}
	// The operator trusts it.
	if err := os.Rename(rejected[0], filepath.Join(dataDir, "opcua", "trusted", filepath.Base(rejected[0]))); err != nil {
		t.Fatal(err)
	}

	// A wrong password fails with a hint.
	wrong := *src.OPCUA
	wrong.Auth.Password = "nope"
	ws, err := New(wrong, dataDir, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Run(ctx, &collectortest.Output{}); err == nil || !strings.Contains(err.Error(), "password") {
		t.Errorf("Run with a wrong password = %v, want an error pointing at the password", err)
	}

	url, db := runPipeline(t, src, dataDir)
	checkInflux(t, url, db)
}

func TestInteropBrowseNodeOPCUA(t *testing.T) {
	endpoint := nodeServer(t, false, "", "")
	var tree, progress bytes.Buffer
	snip, err := Browse(context.Background(), BrowseOptions{Endpoint: endpoint, DataDir: t.TempDir(), MaxDepth: 4}, &tree, &progress)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tree:\n%s\nsnippet:\n%s", tree.String(), snip)
	for _, want := range []string{"Machines/", "cnc-01/", "SpindleSpeed  [Double]", "JointTorques  [Double[]]", "ProgramName  [String]", "DateTime  [DateTime]"} {
		if !strings.Contains(tree.String(), want) {
			t.Errorf("tree lacks %q", want)
		}
	}
	f := loadAgentFile(t, "snippet.yaml", snip, nil)
	for _, want := range []string{"Objects/Machines/*/SpindleSpeed", "spindle_speed_rpm", "joint_torque_nm", "Objects/Machines/{machine}"} {
		if !bytes.Contains(snip, []byte(want)) {
			t.Errorf("snippet lacks %q", want)
		}
	}
	_ = f
}

// TestInteropNodeOPCUAAesPolicies connects with each of the two Aes
// security policies, SignAndEncrypt and a user login (whose password is
// encrypted with the policy's asymmetric algorithm: RSA-OAEP with SHA-1
// for Aes128_Sha256_RsaOaep, with SHA-256 for Aes256_Sha256_RsaPss) to a
// node-opcua server that offers just these two, and reads values and
// their engineering units.
func TestInteropNodeOPCUAAesPolicies(t *testing.T) {
	t.Parallel()
	policies := []string{PolicyAes128Sha256RsaOaep, PolicyAes256Sha256RsaPss}
	endpoint := startNodeServer(t, "--policy", strings.Join(policies, ","), "--user", "operator", "--password", "s3cret")
	for _, policy := range policies {
		t.Run(policy, func(t *testing.T) {
			s := newTestSource(t, Config{
				Endpoint:           endpoint,
				SecurityPolicy:     policy,
				SecurityMode:       SecurityModeSignAndEncrypt,
				Auth:               Auth{Username: "operator", Password: "s3cret"},
				TrustOnFirstUse:    true,
				PublishingInterval: 100 * time.Millisecond,
				Nodes:              []Node{{Path: "Objects/Machines/cnc-01/*"}},
			}, "")
			out := &collectortest.Output{}
			stop := supervise(t, s, out)
			defer stop()
			temp := waitFor(t, out, "Objects/Machines/cnc-01|Temperature", nil)
			if temp.Value != collector.Float(212) || temp.Unit != "°F" {
				t.Errorf("Temperature = %s %q, want 212 °F from its EngineeringUnits", temp.Value.Format(), temp.Unit)
			}
			speed := waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", nil)
			if speed.Unit != "" {
				t.Errorf("SpindleSpeed, which has no EngineeringUnits, has unit %q", speed.Unit)
			}
			// Values keep changing over the encrypted channel.
			waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", func(s collector.Sample) bool { return s.Value != speed.Value })
		})
	}
}

// TestInteropNodeOPCUADeprecatedPolicy: a deprecated policy is refused
// by the config unless allow_deprecated is set, and then connects:
// Basic256, SignAndEncrypt, user login, against node-opcua. Basic128Rsa15
// cannot be shown against it: Node.js 20 refuses the RSA PKCS #1 v1.5
// decryption that policy needs (CVE-2023-46809) unless node runs with
// --security-revert=CVE-2023-46809, as node-opcua warns at start.
func TestInteropNodeOPCUADeprecatedPolicy(t *testing.T) {
	t.Parallel()
	endpoint := startNodeServer(t, "--policy", PolicyBasic256, "--user", "operator", "--password", "s3cret")
	cfg := Config{
		Endpoint:           endpoint,
		SecurityPolicy:     PolicyBasic256,
		Auth:               Auth{Username: "operator", Password: "s3cret"},
		TrustOnFirstUse:    true,
		PublishingInterval: 100 * time.Millisecond,
		Nodes:              []Node{{Path: "Objects/Machines/cnc-01/SpindleSpeed"}},
	}
	if _, err := New(cfg, t.TempDir(), testLogger()); err == nil || !strings.Contains(err.Error(), "allow_deprecated") {
		t.Errorf("New with Basic256 and no allow_deprecated = %v, want an error naming allow_deprecated", err)
	}
	cfg.AllowDeprecated = true
	s := newTestSource(t, cfg, "")
	out := &collectortest.Output{}
	supervise(t, s, out)
	speed := waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", nil)
	waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", func(s collector.Sample) bool { return s.Value != speed.Value })
}
