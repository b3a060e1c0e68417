package config

import "log/slog"

// Secret holds a password or token. Its printed and logged forms are
// redacted so a config dump or a debug log never leaks it; call Reveal where
// the value is really needed.
type Secret string

// Reveal returns the secret in clear text.
func (s Secret) Reveal() string { return string(s) }

// String redacts the value for fmt.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString redacts the value for %#v.
func (s Secret) GoString() string { return `config.Secret("` + s.String() + `")` }

// LogValue redacts the value for log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }
