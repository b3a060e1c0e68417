package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type testTLS struct {
	CAFile string `yaml:"ca_file"`
}

type testSource struct {
	Name    string        `yaml:"name"`
	URL     string        `yaml:"url"`
	QoS     int           `yaml:"qos"`
	Timeout time.Duration `yaml:"timeout"`
	TLS     *testTLS      `yaml:"tls"`
	Tags    map[string]string
}

type testConfig struct {
	Sources  []testSource `yaml:"sources"`
	Password Secret       `yaml:"password"`
	Debug    bool         `yaml:"debug"`
	defaults bool
}

func (c *testConfig) SetDefaults() { c.defaults = true }

func (c *testConfig) Validate() error {
	var errs []error
	for i, s := range c.Sources {
		var se []error
		if s.URL == "" {
			se = append(se, Missing("url"))
		}
		if s.QoS > 1 {
			se = append(se, Invalid("qos", "must be 0 or 1"))
		}
		errs = append(errs, Nest(Index("sources", i), errors.Join(se...)))
	}
	return errors.Join(errs...)
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseProblems(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		want []string // each a substring of one problem line, in order
	}{
		{"valid", "sources:\n  - name: a\n    url: tcp://x\n    timeout: 5s\n", nil, nil},
		{"unknown key", "sources:\n  - name: a\n    url: tcp://x\n    urll: y\n", nil,
			[]string{`cfg.yaml:4: sources[0].urll: unknown key; did you mean "url"?`}},
		{"unknown top key lists valid ones", "sourcez_and_more: 1\n", nil,
			[]string{"cfg.yaml:1: sourcez_and_more: unknown key; valid keys here: debug, password, sources"}},
		{"wrong type", "sources:\n  - name: a\n    url: u\n    qos: high\n", nil,
			[]string{`cfg.yaml:4: sources[0].qos: want a whole number, got "high"`}},
		{"bad duration", "sources:\n  - url: u\n    timeout: soon\n", nil,
			[]string{`cfg.yaml:3: sources[0].timeout: want a duration such as 500ms, 10s or 1m30s, got "soon"`}},
		{"list expected", "sources: {a: 1}\n", nil, []string{"cfg.yaml:1: sources: want a list, got a mapping"}},
		{"missing required from Validate", "sources:\n  - name: a\n  - name: b\n    url: u\n    qos: 2\n", nil,
			[]string{"cfg.yaml:2: sources[0].url: is required", "cfg.yaml:5: sources[1].qos: must be 0 or 1"}},
		{"all problems at once", "sources:\n  - nam: a\n    qos: x\ndebug: maybe\n", nil,
			[]string{"cfg.yaml:2: sources[0].nam: unknown key", "cfg.yaml:3: sources[0].qos: want a whole number", "cfg.yaml:4: debug: want true or false"}},
		{"env expands and types resolve", "sources:\n  - url: ${URL}\n    qos: ${QOS:-1}\n", map[string]string{"URL": "tcp://h"}, nil},
		{"env expanded value is type checked", "sources:\n  - url: u\n    qos: ${QOS}\n", map[string]string{"QOS": "two"},
			[]string{`cfg.yaml:3: sources[0].qos: want a whole number, got "two"`}},
		{"unset env", "password: ${SECRET}\n", nil,
			[]string{"cfg.yaml:1: environment variable SECRET is not set; set it or write ${SECRET:-default}"}},
		{"bad reference", "password: ${SECRET\n", nil, []string{`cfg.yaml:1: "${SECRET" is not a valid variable reference`}},
		{"syntax", "sources:\n  - url: [\n", nil, []string{"cfg.yaml:2: YAML syntax: did not find expected node content"}},
		{"unclosed flow mapping", "debug: true\nsources: {name: a\npassword: x\n", nil, []string{"cfg.yaml:2: YAML syntax: did not find expected"}},
		{"duplicate key", "sources:\n  - name: a\n    url: u\n    name: b\n", nil, []string{`cfg.yaml:4: sources[0].name: given twice (first on line 2)`}},
		{"fraction for whole number", "sources:\n  - url: u\n    qos: 0.5\n", nil, []string{`cfg.yaml:3: sources[0].qos: want a whole number, got "0.5"`}},
		{"empty", "", nil, []string{"cfg.yaml:1: the file is empty"}},
		{"nested unknown", "sources:\n  - url: u\n    tls:\n      ca: x\n", nil, []string{"cfg.yaml:4: sources[0].tls.ca: unknown key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c testConfig
			err := Parse("cfg.yaml", []byte(tt.yaml), &c, env(tt.env))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error:\n%v", err)
				}
				if !c.defaults {
					t.Fatal("SetDefaults was not called")
				}
				return
			}
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("want Problems, got %T %v", err, err)
			}
			if len(ps) != len(tt.want) {
				t.Fatalf("want %d problems, got %d:\n%v", len(tt.want), len(ps), err)
			}
			for i, w := range tt.want {
				if !strings.Contains(ps[i].String(), w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, ps[i].String(), w)
				}
			}
		})
	}
}

func TestParseExpandsIntoValues(t *testing.T) {
	var c testConfig
	err := Parse("c.yaml", []byte("password: \"${PW:-fallback}\"\nsources:\n  - url: ${URL}\n    qos: ${QOS}\n    timeout: ${T:-2s}\n    name: 'cost $$5'\n"), &c,
		env(map[string]string{"URL": "tcp://broker:1883", "QOS": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Sources[0]
	if s.URL != "tcp://broker:1883" || s.QoS != 1 || s.Timeout != 2*time.Second || s.Name != "cost $5" || c.Password.Reveal() != "fallback" {
		t.Fatalf("decoded %+v password %q", s, c.Password.Reveal())
	}
}

func TestExpandEnv(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"${A}", "a"},
		{"x${A}y${B:-bee}z", "xaybeez"},
		{"${EMPTY:-d}", "d"},
		{"${EMPTY}", ""},
		{"$$A", "$A"},
		{"$A", "$A"},
	}
	for _, tt := range tests {
		got, err := ExpandEnv(tt.in, env(map[string]string{"A": "a", "EMPTY": ""}))
		if err != nil || got != tt.want {
			t.Errorf("ExpandEnv(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestSecretIsRedacted(t *testing.T) {
	s := Secret("hunter2")
	for _, got := range []string{s.String(), s.GoString(), s.LogValue().String()} {
		if strings.Contains(got, "hunter2") {
			t.Errorf("secret leaked: %q", got)
		}
	}
	if s.Reveal() != "hunter2" {
		t.Error("Reveal lost the value")
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"sources:\n  - name: a\n    url: tcp://x\n    timeout: 5s\n",
		"sources:\n  - url: ${URL:-x}\n    tls: {ca_file: a}\n    tags: {a: b}\n",
		"debug: [1, 2\n",
		"a: &x {b: 1}\nc: *x\n",
		"sources: !!binary aGVsbG8=\n",
		"password: ${\n",
		"---\n...\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c testConfig
		err := Parse("fuzz.yaml", data, &c, env(map[string]string{"URL": "u"}))
		if err == nil {
			return
		}
		var ps Problems
		if errors.As(err, &ps) {
			if len(ps) == 0 {
				t.Fatal("empty Problems returned as an error")
			}
			for _, p := range ps {
				if p.Msg == "" {
					t.Fatalf("problem without a message: %+v", p)
				}
			}
		}
	})
}

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want ByteSize
		ok   bool
	}{
		{"1GiB", 1 << 30, true}, {"512MiB", 512 << 20, true}, {"64KB", 64000, true}, {"1.5 GiB", 3 << 29, true},
		{"4096", 4096, true}, {"10mb", 10e6, true}, {"2g", 2 << 30, true},
		{"lots", 0, false}, {"-1MiB", 0, false}, {"", 0, false}, {"1e30GiB", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseByteSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
	if s := ByteSize(3 << 30).String(); s != "3GiB" {
		t.Errorf("String = %q", s)
	}
}
