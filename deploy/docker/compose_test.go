// Package docker holds the tests of the container deployment:
// deploy/docker-compose.yml, the Dockerfile and the files they mount.
// Nothing here builds or pulls an image; the tests check that the pieces
// fit together.
package docker

import (
	"bufio"
	"bytes"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
	"go.yaml.in/yaml/v3"
)

const composeFile = "../docker-compose.yml"

type composeService struct {
	Image       string                                `yaml:"image"`
	Build       *struct{ Context, Dockerfile string } `yaml:"build"`
	Command     []string                              `yaml:"command"`
	Environment map[string]string                     `yaml:"environment"`
	Volumes     []string                              `yaml:"volumes"`
	DependsOn   yaml.Node                             `yaml:"depends_on"`
	Ports       []string                              `yaml:"ports"`
	NetworkMode string                                `yaml:"network_mode"`
	ReadOnly    bool                                  `yaml:"read_only"`
	CapDrop     []string                              `yaml:"cap_drop"`
}

type composeProject struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

// interpolate does compose's ${VAR:-default} with an empty environment,
// as a first `docker compose up` without a .env file sees it.
var composeVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}`)

func interpolate(s string) string {
	s = composeVar.ReplaceAllString(s, "$2")
	return strings.ReplaceAll(s, "$$", "$")
}

func loadCompose(t *testing.T, file string) composeProject {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var p composeProject
	if err := yaml.Unmarshal([]byte(interpolate(string(b))), &p); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return p
}

func (s composeService) dependsOn() []string {
	var out []string
	switch s.DependsOn.Kind {
	case yaml.SequenceNode:
		for _, n := range s.DependsOn.Content {
			out = append(out, n.Value)
		}
	case yaml.MappingNode:
		for i := 0; i < len(s.DependsOn.Content); i += 2 {
			out = append(out, s.DependsOn.Content[i].Value)
		}
	}
	return out
}

// mountTarget returns the container path a source is mounted at.
func (s composeService) mountTarget(source string) string {
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[0] == source {
			return parts[1]
		}
	}
	return ""
}

// TestComposeConfig runs `docker compose config` where the compose plugin
// is installed. Without it (as on the project's CI box, which has only the
// docker client) it says so; TestComposeFitsTogether and
// TestDemoGrafanaFitsTheDemo check the files either way.
func TestComposeConfig(t *testing.T) {
	docker, err := exec.LookPath("docker")
	if err == nil {
		err = exec.Command(docker, "compose", "version").Run()
	}
	if err != nil {
		t.Log("docker compose is not available here; the compose file was checked by TestComposeFitsTogether only")
		return
	}
	for _, f := range []string{composeFile, demoGrafanaFile} {
		out, err := exec.Command(docker, "compose", "-f", f, "config", "--quiet").CombinedOutput()
		if err != nil {
			t.Errorf("docker compose -f %s config: %v\n%s", f, err, out)
		}
	}
}

// TestComposeFitsTogether checks what `docker compose config` cannot:
// that every service the issue asks for is there with a pinned image,
// that the agent gets every variable its config needs and can reach the
// broker and the database by service name, that mounted files exist, that
// Grafana gets what its provisioning files read, and that Prometheus
// scrapes the agent's port.
func TestComposeFitsTogether(t *testing.T) {
	p := loadCompose(t, composeFile)
	for _, name := range []string{"mosquitto", "influxdb", "agent", "simulator", "prometheus", "grafana"} {
		if _, ok := p.Services[name]; !ok {
			t.Errorf("no service %s", name)
		}
	}
	for name, s := range p.Services {
		if s.Image == "" {
			t.Errorf("%s: no image", name)
		} else if i := strings.LastIndex(s.Image, ":"); i < 0 || strings.HasSuffix(s.Image, ":latest") {
			t.Errorf("%s: image %q has no pinned tag", name, s.Image)
		}
		for _, d := range s.dependsOn() {
			if _, ok := p.Services[d]; !ok {
				t.Errorf("%s depends on %s, which is not a service", name, d)
			}
		}
		checkMounts(t, p, name)
		for _, port := range s.Ports {
			if !strings.HasPrefix(port, "127.0.0.1:") {
				t.Errorf("%s publishes %s beyond loopback; the README says every port binds to 127.0.0.1", name, port)
			}
		}
	}
	checkService := func(svc, rawURL string) {
		u, err := url.Parse(rawURL)
		if err != nil {
			t.Errorf("%s: %v", rawURL, err)
			return
		}
		if _, ok := p.Services[u.Hostname()]; !ok {
			t.Errorf("%s: host %s of %s is not a service", svc, u.Hostname(), rawURL)
		}
	}

	agent := p.Services["agent"]
	for _, s := range []string{"agent", "simulator"} {
		if b := p.Services[s].Build; b == nil || b.Dockerfile != "deploy/docker/Dockerfile" || b.Context != ".." {
			t.Errorf("%s: build %+v, want context .. and deploy/docker/Dockerfile", s, b)
		}
		if !p.Services[s].ReadOnly || len(p.Services[s].CapDrop) == 0 {
			t.Errorf("%s: want read_only and cap_drop", s)
		}
	}
	if len(agent.Command) < 3 || agent.Command[0] != "agent" || agent.Command[1] != "--config" {
		t.Fatalf("agent command %q, want agent --config FILE", agent.Command)
	}
	cfgPath := agent.Command[2]
	var cfgSource string
	for _, v := range agent.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == cfgPath {
			cfgSource = parts[0]
		}
	}
	if cfgSource == "" {
		t.Fatalf("the agent's config %s is not mounted", cfgPath)
	}
	for _, v := range []string{"MQTT_URL", "INFLUX_URL", "INFLUX_TOKEN", "INFLUX_ORG", "INFLUX_BUCKET", "SHOPFLOOR_HTTP", "SHOPFLOOR_DATA_DIR"} {
		if agent.Environment[v] == "" {
			t.Errorf("agent: %s is not set", v)
		}
	}
	// A ${VAR} without a default in the config must come from compose.
	cfg, err := os.ReadFile(filepath.Join("..", cfgSource))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`).FindAllStringSubmatch(string(cfg), -1) {
		if _, ok := agent.Environment[m[1]]; !ok {
			t.Errorf("agent: %s needs ${%s}, which compose does not set", cfgSource, m[1])
		}
	}
	checkService("agent", agent.Environment["MQTT_URL"])
	checkService("agent", agent.Environment["INFLUX_URL"])
	if agent.mountTarget("agent-data") != agent.Environment["SHOPFLOOR_DATA_DIR"] {
		t.Errorf("agent: SHOPFLOOR_DATA_DIR %s is not the agent-data volume (%s): the queue would not survive the container",
			agent.Environment["SHOPFLOOR_DATA_DIR"], agent.mountTarget("agent-data"))
	}
	_, agentPort, _ := strings.Cut(agent.Environment["SHOPFLOOR_HTTP"], ":")
	if !strings.HasPrefix(agent.Environment["SHOPFLOOR_HTTP"], "0.0.0.0:") {
		t.Errorf("agent: SHOPFLOOR_HTTP %s is not reachable by Prometheus from another container", agent.Environment["SHOPFLOOR_HTTP"])
	}
	checkAgentConfig(t, filepath.Join("..", cfgSource), agent.Environment)

	sim := p.Services["simulator"]
	if len(sim.Command) == 0 || sim.Command[0] != "simulate" {
		t.Errorf("simulator command %q, want shopfloor simulate", sim.Command)
	}
	for i, a := range sim.Command {
		if a == "--mqtt" && i+1 < len(sim.Command) {
			checkService("simulator", sim.Command[i+1])
		}
	}

	// Prometheus scrapes the agent where it listens.
	prom := p.Services["prometheus"]
	promCfg, err := os.ReadFile(filepath.Join("..", mountSource(prom, "/etc/prometheus/prometheus.yml")))
	if err != nil {
		t.Fatalf("prometheus config: %v", err)
	}
	if !bytes.Contains(promCfg, []byte(`"agent:`+agentPort+`"`)) {
		t.Errorf("prometheus.yml does not scrape agent:%s:\n%s", agentPort, promCfg)
	}

	graf := p.Services["grafana"]
	checkGrafana(t, graf)
	checkService("grafana", graf.Environment["INFLUX_URL"])
	checkService("grafana", graf.Environment["PROMETHEUS_URL"])
	if graf.Environment["INFLUX_BUCKET"] != agent.Environment["INFLUX_BUCKET"] || graf.Environment["INFLUX_TOKEN"] != agent.Environment["INFLUX_TOKEN"] {
		t.Errorf("grafana reads another bucket or token than the agent writes")
	}

	// InfluxDB: the setup creates the org and bucket the agent writes to,
	// with the token it uses.
	infl := p.Services["influxdb"].Environment
	if infl["DOCKER_INFLUXDB_INIT_BUCKET"] != agent.Environment["INFLUX_BUCKET"] ||
		infl["DOCKER_INFLUXDB_INIT_ORG"] != agent.Environment["INFLUX_ORG"] ||
		infl["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] != agent.Environment["INFLUX_TOKEN"] {
		t.Errorf("influxdb setup (%v) does not match the agent's INFLUX_* settings", infl)
	}
}

// checkMounts checks that what service name mounts exists: a file or
// folder of the checkout, or a declared volume.
func checkMounts(t *testing.T, p composeProject, name string) {
	t.Helper()
	for _, v := range p.Services[name].Volumes {
		src, _, _ := strings.Cut(v, ":")
		if strings.HasPrefix(src, ".") {
			if _, err := os.Stat(filepath.Join("..", src)); err != nil {
				t.Errorf("%s mounts %s: %v", name, src, err)
			}
		} else if _, ok := p.Volumes[src]; !ok {
			t.Errorf("%s mounts volume %s, which is not declared", name, src)
		}
	}
}

func mountSource(s composeService, target string) string {
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == target {
			return parts[0]
		}
	}
	return ""
}

// checkAgentConfig runs `shopfloor check` on the agent's config with the
// environment compose gives it.
func checkAgentConfig(t *testing.T, cfg string, env map[string]string) {
	t.Helper()
	bin := collectortest.Build(t, "../../cmd/shopfloor")
	cmd := exec.Command(bin, "check", "--config", cfg)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("shopfloor check with compose's environment: %v\n%s", err, out)
	}
}

// TestDockerfile checks the image promises: a Go build stage and a small
// final stage that runs as a non-root user, with pinned base images.
func TestDockerfile(t *testing.T) {
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var froms []string
	var lastUser string
	args := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "ARG":
			k, v, _ := strings.Cut(fields[1], "=")
			args[k] = v
		case "FROM":
			img := fields[1]
			for k, v := range args {
				img = strings.ReplaceAll(img, "${"+k+"}", v)
			}
			froms = append(froms, img)
			lastUser = ""
		case "USER":
			lastUser = fields[1]
		}
	}
	if len(froms) < 2 {
		t.Fatalf("FROM %v: want a multi-stage build", froms)
	}
	if !strings.HasPrefix(froms[0], "golang:") {
		t.Errorf("build stage %s is not a golang image", froms[0])
	}
	final := froms[len(froms)-1]
	if !strings.HasPrefix(final, "gcr.io/distroless/static") || !strings.Contains(final, ":nonroot") {
		t.Errorf("final stage %s is not distroless static nonroot", final)
	}
	for _, img := range froms {
		if !strings.Contains(img, ":") || strings.HasSuffix(img, ":latest") {
			t.Errorf("base image %s is not pinned", img)
		}
	}
	if lastUser == "" || strings.HasPrefix(lastUser, "0") || strings.HasPrefix(lastUser, "root") {
		t.Errorf("final stage runs as %q, want a non-root user", lastUser)
	}
}

// checkGrafana checks that the provisioning files' ${VAR}s are set and
// that the dashboards are mounted where the provider looks.
func checkGrafana(t *testing.T, graf composeService) {
	t.Helper()
	provDS := mountSource(graf, "/etc/grafana/provisioning/datasources")
	provDash := mountSource(graf, "/etc/grafana/provisioning/dashboards")
	if provDS == "" || provDash == "" {
		t.Fatalf("grafana: provisioning folders not mounted: %q %q", provDS, provDash)
	}
	for _, dir := range []string{provDS, provDash} {
		files, _ := filepath.Glob(filepath.Join("..", dir, "*.yaml"))
		if len(files) == 0 {
			t.Errorf("grafana: no provisioning file in %s", dir)
		}
		for _, f := range files {
			b, _ := os.ReadFile(f)
			b = regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAll(b, nil) // comments
			for _, m := range regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`).FindAllStringSubmatch(string(b), -1) {
				if _, ok := graf.Environment[m[1]]; !ok {
					t.Errorf("grafana: %s reads $%s, which compose does not set", f, m[1])
				}
			}
		}
	}
	provider, _ := os.ReadFile(filepath.Join("..", provDash, "shopfloor.yaml"))
	var prov struct {
		Providers []struct {
			Options struct{ Path string } `yaml:"options"`
		} `yaml:"providers"`
	}
	if err := yaml.Unmarshal(provider, &prov); err != nil || len(prov.Providers) != 1 {
		t.Fatalf("dashboard provider: %v %+v", err, prov)
	}
	jsonDir := ""
	for _, v := range graf.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == prov.Providers[0].Options.Path {
			jsonDir = parts[0]
		}
	}
	if jsonDir == "" {
		t.Fatalf("grafana: nothing mounted at the provider's path %s", prov.Providers[0].Options.Path)
	}
	if files, _ := filepath.Glob(filepath.Join("..", jsonDir, "*.json")); len(files) < 4 {
		t.Errorf("grafana: %s holds %d dashboards, want 4", jsonDir, len(files))
	}
	home := graf.Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
	if rel, ok := strings.CutPrefix(home, prov.Providers[0].Options.Path+"/"); !ok {
		t.Errorf("grafana home dashboard %s is not under %s", home, prov.Providers[0].Options.Path)
	} else if _, err := os.Stat(filepath.Join("..", jsonDir, rel)); err != nil {
		t.Errorf("grafana home dashboard: %v", err)
	}

}
