package opcua

import (
	"strings"
	"testing"
)

func TestParsePath(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // String() of the result, or "error:<substring>"
	}{
		{"Objects/Machines/*/SpindleSpeed", "Objects/Machines/*/SpindleSpeed"},
		{"Objects/2:Plant/**/Speed", "Objects/2:Plant/**/Speed"},
		{`Objects/a\/b/c`, "Objects/a/b/c"},
		{"Objects/Axis[1-3]/Load", "Objects/Axis[1-3]/Load"},
		{"Objects/Foo:Bar", "Objects/Foo:Bar"},
		{"", "error:empty"},
		{"Objects//Speed", "error:empty"},
		{"Objects/**", "error:followed by a name"},
		{"Objects/**/**/x", "error:twice"},
		{"Objects/[", "error:bad pattern"},
		{`Objects\`, "error:lone"},
		{"Objects/70000:X", "error:out of range"},
		{"Objects/2:", "error:no name"},
	} {
		p, err := ParsePath(tc.in)
		if want, ok := strings.CutPrefix(tc.want, "error:"); ok {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("ParsePath(%q) = %v, %v; want error with %q", tc.in, p, err, want)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParsePath(%q): %v", tc.in, err)
			continue
		}
		if got := p.String(); got != tc.want {
			t.Errorf("ParsePath(%q).String() = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPathSegmentMatches(t *testing.T) {
	p, err := ParsePath(`Objects/2:Speed/Axis?/a\*b/c\/d`)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		seg  int
		ns   uint16
		name string
		want bool
	}{
		{0, 0, "Objects", true},
		{0, 3, "Objects", true},
		{1, 2, "Speed", true},
		{1, 3, "Speed", false},
		{2, 1, "Axis1", true},
		{2, 1, "Axis12", false},
		{3, 1, "a*b", true},
		{3, 1, "axb", false},
		{4, 1, "c/d", true},
	}
	for _, c := range cases {
		if got := p[c.seg].matches(c.ns, c.name); got != c.want {
			t.Errorf("segment %q matches %d:%q = %v, want %v", p[c.seg].Name, c.ns, c.name, got, c.want)
		}
	}
}

// FuzzParsePath checks that any pattern either fails cleanly or parses
// into segments that are non-empty, with ** never last, and that every
// browse name escaped by escapeName matches itself.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"Objects/Machines/*/SpindleSpeed", "Objects/2:Plant/**/Speed", `a\/b`, "x/[", "**", "1:", `\`, "Objects/Axis[1-3]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePath(s)
		if err != nil {
			return
		}
		if len(p) == 0 || len(p) > maxPathSegments {
			t.Fatalf("ParsePath(%q) gave %d segments", s, len(p))
		}
		for i, seg := range p {
			if seg.Name == "" {
				t.Fatalf("ParsePath(%q): empty segment %d", s, i)
			}
			if seg.Deep && i == len(p)-1 {
				t.Fatalf("ParsePath(%q): ** last", s)
			}
		}
		// Any single browse name, escaped, is a one-level literal path
		// that matches exactly that name.
		name := s
		if name == "" || strings.Contains(name, "\x00") {
			return
		}
		esc := escapeName(name)
		if isDigits(strings.SplitN(esc, ":", 2)[0]) && strings.Contains(esc, ":") || esc == "**" {
			return // a namespace prefix or ** means something else
		}
		q, err := ParsePath(esc)
		if err != nil || len(q) != 1 {
			return
		}
		if !q[0].matches(0, name) {
			t.Fatalf("escaped name %q (as %q) does not match itself", name, esc)
		}
	})
}
