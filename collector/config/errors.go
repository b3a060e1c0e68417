// Package config loads shopfloor's YAML configuration: strict decoding,
// ${VAR} and ${VAR:-default} expansion, and errors that name the file, line
// and key, so `shopfloor check` can point at every problem at once.
//
// Adapters use only the error helpers here (Missing, Invalid, Nest) in their
// Validate methods; the loader turns the key paths those errors carry into
// line numbers.
package config

import (
	"errors"
	"fmt"
	"strings"
)

// FieldError is a problem with one configuration key. Key is a dotted path
// relative to the struct that produced it ("tls.ca_file", "subscriptions[2].topic");
// Nest prefixes it as the error travels up to the root.
type FieldError struct {
	Key string
	Err error
}

func (e *FieldError) Error() string {
	if e.Key == "" {
		return e.Err.Error()
	}
	return e.Key + ": " + e.Err.Error()
}

func (e *FieldError) Unwrap() error { return e.Err }

// Invalid reports a key whose value is wrong, with a message saying what
// would be right.
func Invalid(key, format string, args ...any) error {
	return &FieldError{Key: key, Err: fmt.Errorf(format, args...)}
}

// Missing reports a required key that has no value.
func Missing(key string) error {
	return &FieldError{Key: key, Err: errors.New("is required")}
}

// Nest puts every FieldError inside err under prefix, so a sub-config's
// Validate can name keys relative to itself. Errors that are not
// FieldErrors become FieldErrors at prefix. A nil err stays nil.
func Nest(prefix string, err error) error {
	if err == nil {
		return nil
	}
	flat := Flatten(err)
	out := make([]error, 0, len(flat))
	for _, e := range flat {
		var fe *FieldError
		if errors.As(e, &fe) {
			out = append(out, &FieldError{Key: joinKey(prefix, fe.Key), Err: fe.Err})
			continue
		}
		out = append(out, &FieldError{Key: prefix, Err: e})
	}
	return errors.Join(out...)
}

// Index formats the key of a list element: Index("sources", 2) is "sources[2]".
func Index(key string, i int) string { return fmt.Sprintf("%s[%d]", key, i) }

// Flatten unpacks errors.Join trees into a flat list, keeping order.
func Flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, Flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func joinKey(prefix, key string) string {
	switch {
	case prefix == "":
		return key
	case key == "":
		return prefix
	case strings.HasPrefix(key, "["):
		return prefix + key
	}
	return prefix + "." + key
}
