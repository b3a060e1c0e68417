package main

import (
	"testing"
	"time"
)

// TestNextPoll: reads come every 200 ms while the end is far and close in
// on it, so a run's end is known to 10 ms without reading all the time.
func TestNextPoll(t *testing.T) {
	const every = 200 * time.Millisecond
	for _, tc := range []struct {
		name          string
		written, want float64
		elapsed, poll time.Duration
	}{
		{"nothing yet", 0, 1000, time.Second, every},
		{"before the start", -1, 1000, time.Second, every},
		{"far from the end", 100, 1000, time.Second, every},
		{"half a second left", 800, 1000, 2 * time.Second, every},
		{"a third of a second left", 750, 1000, time.Second, 166666666 * time.Nanosecond},
		{"closing in", 900, 1000, 900 * time.Millisecond, 50 * time.Millisecond},
		{"at the end", 999, 1000, time.Second, 10 * time.Millisecond},
		{"done", 1000, 1000, time.Second, 10 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := nextPoll(every, tc.written, tc.want, tc.elapsed)
			if got != tc.poll {
				t.Errorf("nextPoll = %v, want %v", got, tc.poll)
			}
		})
	}
}
