package opcua

import (
	"testing"
	"time"
)

// TestItemEmitted walks one node through a reconnect: the previous
// connection emitted up to t0, the back-fill reads t0-1s..t0+3s, and
// live values follow.
func TestItemEmitted(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	it := &item{prev: t0, last: t0, window: true}
	steps := []struct {
		name    string
		t       time.Time
		history bool
		want    bool
	}{
		{"back-fill: read again from the group's earlier start", at(-1), true, true},
		{"back-fill: the last value emitted before the gap", at(0), true, true},
		{"back-fill: new", at(1), true, false},
		{"back-fill: new", at(3), true, false},
		{"back-fill: a continuation point answered again", at(3), true, true},
		{"live: the value before the gap, re-read at reconnection", at(0), false, true},
		{"live: queued while the back-fill read it", at(2), false, true},
		{"live: the newest the back-fill read", at(3), false, true},
		{"live: no timestamp at all", time.Time{}, false, false},
		{"live: newer than the back-fill, closes the window", at(4), false, false},
		{"live: after the window, a clock set back is taken", at(2), false, false},
	}
	for _, s := range steps {
		if got := it.emitted(s.t, s.history); got != s.want {
			t.Errorf("%s (%s): emitted = %v, want %v", s.name, s.t.Sub(t0), got, s.want)
		}
		// What emit does with a value it took.
		if !s.want && !s.t.IsZero() {
			if s.t.After(it.last) {
				it.last = s.t
			}
			if s.history && s.t.After(it.histEnd) {
				it.histEnd = s.t
			}
		}
	}

	// A node read for the first time has no window: everything passes.
	fresh := &item{}
	if fresh.emitted(t0, false) || fresh.emitted(t0, false) {
		t.Error("a node without an earlier value dropped a live value")
	}
}
