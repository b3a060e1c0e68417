package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Problem is one configuration error at a place in a file.
type Problem struct {
	File string
	Line int // 0 when unknown
	Key  string
	Msg  string
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		b.WriteString(":" + strconv.Itoa(p.Line))
	}
	b.WriteString(": ")
	if p.Key != "" {
		b.WriteString(p.Key + ": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems is every error found in one configuration file, in line order.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Defaulter is implemented by configs that fill unset values. Load calls
// SetDefaults after decoding and before Validate.
type Defaulter interface{ SetDefaults() }

// Validator is implemented by configs that check themselves. Validate
// returns FieldErrors (possibly joined) so Load can point at lines.
type Validator interface{ Validate() error }

// Load reads the YAML file at path into dst, a pointer to a struct: it
// expands ${VAR} and ${VAR:-default} in every value, refuses unknown keys
// and values of the wrong type, then calls dst's SetDefaults and Validate.
// Every problem found is returned at once as Problems.
func Load(path string, dst any, getenv func(string) (string, bool)) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data, dst, getenv)
}

// Parse is Load on bytes already read; name is used in messages. getenv
// defaults to os.LookupEnv.
func Parse(name string, data []byte, dst any, getenv func(string) (string, bool)) error {
	if getenv == nil {
		getenv = os.LookupEnv
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return Problems{syntaxProblem(name, data, err)}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return Problems{{File: name, Line: 1, Msg: "the file is empty; see deploy/examples/ for a starting point"}}
	}
	doc := root.Content[0]
	var ps Problems
	expandEnv(doc, getenv, func(n *yaml.Node, msg string) {
		ps = append(ps, Problem{File: name, Line: n.Line, Msg: msg})
	})
	check(doc, reflect.TypeOf(dst), "", func(n *yaml.Node, key, msg string) {
		ps = append(ps, Problem{File: name, Line: n.Line, Key: key, Msg: msg})
	})
	if len(ps) > 0 {
		return sorted(ps)
	}
	if err := doc.Decode(dst); err != nil {
		return Problems{{File: name, Msg: err.Error()}}
	}
	if d, ok := dst.(Defaulter); ok {
		d.SetDefaults()
	}
	if v, ok := dst.(Validator); ok {
		for _, e := range Flatten(v.Validate()) {
			p := Problem{File: name, Msg: e.Error()}
			var fe *FieldError
			if errors.As(e, &fe) {
				p.Key, p.Msg = fe.Key, fe.Err.Error()
				p.Line = lineOf(doc, fe.Key)
			}
			ps = append(ps, p)
		}
	}
	if len(ps) > 0 {
		return sorted(ps)
	}
	return nil
}

func sorted(ps Problems) Problems {
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Line < ps[j].Line })
	return ps
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func syntaxProblem(name string, data []byte, err error) Problem {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		// yaml.v3 numbers parser errors ("did not find expected ...") from
		// zero, pointing one line above the construct left open; scanner
		// errors are right.
		// At the end of the file it counts the line after the last one.
		if strings.HasPrefix(m[2], "did not find expected") && line < len(strings.Split(strings.TrimRight(string(data), "\n"), "\n")) {
			line++
		}
		return Problem{File: name, Line: line, Msg: "YAML syntax: " + m[2]}
	}
	return Problem{File: name, Msg: strings.TrimPrefix(msg, "yaml: ")}
}

var envRef = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}|\$\{[^}]*\}?`)

// ExpandEnv replaces ${VAR} and ${VAR:-default} in s; $$ is a literal $.
// A ${VAR} whose variable is unset is an error, so a typo cannot silently
// become an empty password.
func ExpandEnv(s string, getenv func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var errs []error
	out := envRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sub := envRef.FindStringSubmatch(m)
		if sub[1] == "" {
			errs = append(errs, fmt.Errorf("%q is not a valid variable reference; write ${NAME} or ${NAME:-default}", m))
			return m
		}
		v, ok := getenv(sub[1])
		if sub[2] != "" { // has :-default
			if !ok || v == "" {
				return sub[3]
			}
			return v
		}
		if !ok {
			errs = append(errs, fmt.Errorf("environment variable %s is not set; set it or write ${%s:-default}", sub[1], sub[1]))
			return ""
		}
		return v
	})
	return out, errors.Join(errs...)
}

func expandEnv(n *yaml.Node, getenv func(string) (string, bool), report func(*yaml.Node, string)) {
	switch n.Kind {
	case yaml.ScalarNode:
		v, err := ExpandEnv(n.Value, getenv)
		if err != nil {
			for _, e := range Flatten(err) {
				report(n, e.Error())
			}
			return
		}
		if v != n.Value {
			n.Value = v
			if n.Style == 0 || n.Style == yaml.TaggedStyle {
				// Let the expanded text resolve its own type, so
				// port: ${PORT} becomes a number.
				n.Tag = ""
			}
		}
	case yaml.MappingNode:
		for i := 1; i < len(n.Content); i += 2 {
			expandEnv(n.Content[i], getenv, report)
		}
	case yaml.SequenceNode, yaml.DocumentNode:
		for _, c := range n.Content {
			expandEnv(c, getenv, report)
		}
	}
}

var (
	durationType    = reflect.TypeOf(time.Duration(0))
	unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
)

// check walks n alongside t and reports unknown keys and values of the
// wrong type with their key paths, which node.Decode cannot do strictly.
func check(n *yaml.Node, t reflect.Type, key string, report func(n *yaml.Node, key, msg string)) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // an empty value leaves the zero value, which Validate judges
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) || t == durationType {
		decodeScalar(n, t, key, report)
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			report(n, key, "want a mapping of keys to values, got "+describe(n))
			return
		}
		fields := yamlFields(t)
		reportDuplicates(n, key, report)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fields[k.Value]
			if !ok {
				report(k, joinKey(key, k.Value), "unknown key"+suggest(k.Value, fields))
				continue
			}
			check(v, f, joinKey(key, k.Value), report)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			report(n, key, "want a mapping, got "+describe(n))
			return
		}
		reportDuplicates(n, key, report)
		for i := 0; i+1 < len(n.Content); i += 2 {
			check(n.Content[i+1], t.Elem(), joinKey(key, n.Content[i].Value), report)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			report(n, key, "want a list, got "+describe(n))
			return
		}
		for i, c := range n.Content {
			check(c, t.Elem(), Index(key, i), report)
		}
	case reflect.Interface:
	default:
		if n.Kind != yaml.ScalarNode {
			report(n, key, "want "+typeWord(t)+", got "+describe(n))
			return
		}
		decodeScalar(n, t, key, report)
	}
}

// reportDuplicates reports a key given twice in one mapping: YAML forbids
// it, and which of the two values wins would be a guess.
func reportDuplicates(n *yaml.Node, key string, report func(*yaml.Node, string, string)) {
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if line, ok := first[k.Value]; ok {
			report(k, joinKey(key, k.Value), fmt.Sprintf("given twice (first on line %d); keep one", line))
			continue
		}
		first[k.Value] = k.Line
	}
}

func decodeScalar(n *yaml.Node, t reflect.Type, key string, report func(*yaml.Node, string, string)) {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		// yaml.v3 truncates 5000.5 into an int without a word.
		if t != durationType && n.ShortTag() == "!!float" {
			report(n, key, "want "+typeWord(t)+", got "+describe(n))
			return
		}
	}
	v := reflect.New(t)
	if err := n.Decode(v.Interface()); err != nil {
		msg := "want " + typeWord(t) + ", got " + describe(n)
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			msg = err.Error()
		}
		report(n, key, msg)
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return strconv.Quote(n.Value)
}

func typeWord(t reflect.Type) string {
	if t == durationType {
		return "a duration such as 500ms, 10s or 1m30s"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "text"
	}
	return t.String()
}

// yamlFields maps the YAML keys of struct t to their field types, looking
// through ",inline" embeds.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(opts, "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			for k, v := range yamlFields(ft) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name) // yaml.v3's own default
		}
		out[name] = f.Type
	}
	return out
}

func suggest(k string, fields map[string]reflect.Type) string {
	best, bestD := "", 3
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
		if d := editDistance(k, name); d < bestD {
			best, bestD = name, d
		}
	}
	if best != "" {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	sort.Strings(names)
	return "; valid keys here: " + strings.Join(names, ", ")
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var pathPart = regexp.MustCompile(`[^.\[\]]+|\[\d+\]`)

// lineOf finds the line of a dotted key path such as sources[1].mqtt.url.
// For a key that is missing it returns the line of the deepest part that
// exists, which is where the user has to add it.
func lineOf(doc *yaml.Node, key string) int {
	n := doc
	line := n.Line
	for _, part := range pathPart.FindAllString(key, -1) {
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		var next *yaml.Node
		if strings.HasPrefix(part, "[") {
			i, _ := strconv.Atoi(part[1 : len(part)-1])
			if n.Kind == yaml.SequenceNode && i < len(n.Content) {
				next = n.Content[i]
				line = next.Line
			}
		} else if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == part {
					next = n.Content[i+1]
					line = n.Content[i].Line
					break
				}
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}
