package opcua

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxPathSegments bounds a pattern, and with it the depth a ** may walk:
// no real address space nests deeper, and a bound keeps a typo from
// walking a whole server.
const maxPathSegments = 32

// PathSegment is one level of a browse-path pattern.
type PathSegment struct {
	// Name is the browse name or a path.Match glob over it.
	Name string
	// Namespace is the browse name's namespace index, or -1 for any.
	Namespace int
	// Glob is set when Name holds wildcards.
	Glob bool
	// Deep is ** : zero or more levels.
	Deep bool
}

// Path is a parsed browse-path pattern.
type Path []PathSegment

// ParsePath parses a browse-path pattern such as
// "Objects/Machines/*/SpindleSpeed" or "Objects/2:Plant/**/Speed".
// Segments are separated by "/"; a "/" or "\" inside a browse name is
// escaped with "\". A segment may be prefixed with "<ns>:" to pin the
// browse name's namespace.
func ParsePath(s string) (Path, error) {
	if s == "" {
		return nil, errors.New("empty browse path; write it like Objects/Machines/*/SpindleSpeed")
	}
	if !utf8.ValidString(s) {
		return nil, errors.New("browse path is not valid UTF-8")
	}
	raw, err := splitPath(s)
	if err != nil {
		return nil, err
	}
	if len(raw) > maxPathSegments {
		return nil, fmt.Errorf("browse path %q has %d levels, more than the %d allowed", s, len(raw), maxPathSegments)
	}
	p := make(Path, 0, len(raw))
	for i, seg := range raw {
		if seg.text == "" {
			return nil, fmt.Errorf("browse path %q: level %d is empty (a doubled or trailing /?)", s, i+1)
		}
		ps := PathSegment{Name: seg.text, Namespace: -1}
		if !seg.escaped && seg.text == "**" {
			if i == len(raw)-1 {
				return nil, fmt.Errorf("browse path %q: ** must be followed by a name; it stands for any folders in between", s)
			}
			if i > 0 && p[len(p)-1].Deep {
				return nil, fmt.Errorf("browse path %q: ** twice in a row", s)
			}
			ps.Deep = true
			p = append(p, ps)
			continue
		}
		if ns, name, ok := strings.Cut(seg.text, ":"); ok && ns != "" && isDigits(ns) {
			n, err := strconv.Atoi(ns)
			if err != nil || n > 65535 {
				return nil, fmt.Errorf("browse path %q: namespace %q in level %d is out of range", s, ns, i+1)
			}
			if name == "" {
				return nil, fmt.Errorf("browse path %q: level %d has a namespace but no name", s, i+1)
			}
			ps.Namespace, ps.Name = n, name
		}
		if strings.ContainsAny(ps.Name, "*?[") {
			if _, err := path.Match(ps.Name, ""); err != nil {
				return nil, fmt.Errorf("browse path %q: level %d %q is a bad pattern: %v", s, i+1, ps.Name, err)
			}
			ps.Glob = true
		}
		p = append(p, ps)
	}
	return p, nil
}

type rawSegment struct {
	text    string
	escaped bool // held an escape, so "**" is literal
}

func splitPath(s string) ([]rawSegment, error) {
	var (
		out []rawSegment
		cur strings.Builder
		esc bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("browse path %q ends in a lone \\", s)
			}
			i++
			// Keep glob escapes for path.Match, drop path escapes.
			if n := s[i]; n == '*' || n == '?' || n == '[' || n == '\\' {
				cur.WriteByte('\\')
			}
			cur.WriteByte(s[i])
			esc = true
		case c == '/':
			out = append(out, rawSegment{cur.String(), esc})
			cur.Reset()
			esc = false
		default:
			cur.WriteByte(c)
		}
	}
	return append(out, rawSegment{cur.String(), esc}), nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// matches reports whether a browse name (namespace ns, name) fits seg.
func (seg PathSegment) matches(ns uint16, name string) bool {
	if seg.Namespace >= 0 && int(ns) != seg.Namespace {
		return false
	}
	if !seg.Glob {
		return unescape(seg.Name) == name
	}
	ok, _ := path.Match(seg.Name, name)
	return ok
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// escapeName escapes a browse name for use as one path segment, so a
// name holding "/" keeps its place in an origin or a snippet.
func escapeName(name string) string {
	if !strings.ContainsAny(name, `/\*?[`) {
		return name
	}
	var b strings.Builder
	for _, r := range name {
		switch r {
		case '/', '\\', '*', '?', '[':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// String formats the pattern back into its text form.
func (p Path) String() string {
	parts := make([]string, len(p))
	for i, seg := range p {
		s := seg.Name
		if seg.Namespace >= 0 {
			s = strconv.Itoa(seg.Namespace) + ":" + s
		}
		parts[i] = s
	}
	return strings.Join(parts, "/")
}
