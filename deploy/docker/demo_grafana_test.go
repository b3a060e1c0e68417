package docker

import (
	"bytes"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

const demoGrafanaFile = "../demo-grafana.yml"

// demoDefaults reads the default of every flag from `shopfloor demo -h`,
// so the test follows the demo rather than a copy of its numbers.
func demoDefaults(t *testing.T) map[string]string {
	t.Helper()
	bin := collectortest.Build(t, "../../cmd/shopfloor")
	var help bytes.Buffer
	cmd := exec.Command(bin, "demo", "-h")
	cmd.Stdout, cmd.Stderr = &help, &help
	_ = cmd.Run() // -h exits 2 after printing the usage
	out := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^  -(\S+)[^\n]*\n[^\n]*\(default "([^"]*)"\)`).FindAllStringSubmatch(help.String(), -1) {
		out[m[1]] = m[2]
	}
	for _, f := range []string{"influx-listen", "influx-bucket", "http"} {
		if out[f] == "" {
			t.Fatalf("shopfloor demo -h shows no default for --%s:\n%s", f, help.String())
		}
	}
	return out
}

// TestDemoGrafanaFitsTheDemo checks the compose file the demo points at
// for Grafana: it must find the demo's InfluxDB and database and scrape
// the demo's agent where they are by default, and reach them from
// containers (host network), listening on loopback only.
func TestDemoGrafanaFitsTheDemo(t *testing.T) {
	defaults := demoDefaults(t)
	p := loadCompose(t, demoGrafanaFile)
	for _, name := range []string{"grafana", "prometheus"} {
		s, ok := p.Services[name]
		if !ok {
			t.Fatalf("no service %s", name)
		}
		if i := strings.LastIndex(s.Image, ":"); i < 0 || strings.HasSuffix(s.Image, ":latest") {
			t.Errorf("%s: image %q has no pinned tag", name, s.Image)
		}
		// The demo's services listen on 127.0.0.1 of the host, which a
		// container on a bridge network cannot reach.
		if s.NetworkMode != "host" {
			t.Errorf("%s: network_mode %q, want host", name, s.NetworkMode)
		}
		if len(s.Ports) > 0 {
			t.Errorf("%s publishes ports %v; with the host network it listens itself", name, s.Ports)
		}
		checkMounts(t, p, name)
	}

	graf := p.Services["grafana"]
	checkGrafana(t, graf)
	u, err := url.Parse(graf.Environment["INFLUX_URL"])
	if err != nil || u.Host != defaults["influx-listen"] {
		t.Errorf("grafana: INFLUX_URL %q, want the demo's influxd at %s", graf.Environment["INFLUX_URL"], defaults["influx-listen"])
	}
	if graf.Environment["INFLUX_BUCKET"] != defaults["influx-bucket"] {
		t.Errorf("grafana: INFLUX_BUCKET %q, want the demo's database %q", graf.Environment["INFLUX_BUCKET"], defaults["influx-bucket"])
	}
	if graf.Environment["GF_SERVER_HTTP_ADDR"] != "127.0.0.1" {
		t.Errorf("grafana: GF_SERVER_HTTP_ADDR %q: on the host network it would listen beyond loopback", graf.Environment["GF_SERVER_HTTP_ADDR"])
	}

	prom := p.Services["prometheus"]
	var listen string
	for _, a := range prom.Command {
		if v, ok := strings.CutPrefix(a, "--web.listen-address="); ok {
			listen = v
		}
	}
	if !strings.HasPrefix(listen, "127.0.0.1:") {
		t.Errorf("prometheus listens on %q, want loopback", listen)
	}
	if pu, err := url.Parse(graf.Environment["PROMETHEUS_URL"]); err != nil || pu.Host != listen {
		t.Errorf("grafana: PROMETHEUS_URL %q, but prometheus listens on %s", graf.Environment["PROMETHEUS_URL"], listen)
	}
	promCfg, err := os.ReadFile(filepath.Join("..", mountSource(prom, "/etc/prometheus/prometheus.yml")))
	if err != nil {
		t.Fatalf("prometheus config: %v", err)
	}
	if !bytes.Contains(promCfg, []byte(`"`+defaults["http"]+`"`)) {
		t.Errorf("prometheus-demo.yml does not scrape the demo's agent at %s:\n%s", defaults["http"], promCfg)
	}

	// The demo tells its user about this file.
	demoSrc, err := os.ReadFile("../../cmd/shopfloor/demo.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(demoSrc, []byte(`"deploy/`+filepath.Base(demoGrafanaFile)+`"`)) {
		t.Errorf("cmd/shopfloor/demo.go does not point at deploy/%s", filepath.Base(demoGrafanaFile))
	}
}
