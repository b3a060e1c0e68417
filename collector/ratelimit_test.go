package collector

import (
	"testing"
	"time"
)

func TestRateLimiter(t *testing.T) {
	l := newRateLimiter(10 * time.Second)
	clock := time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return clock }
	steps := []struct {
		after          time.Duration
		key            string
		wantOK         bool
		wantSuppressed int
	}{
		{0, "invalid_json", true, 0},
		{time.Second, "invalid_json", false, 0},
		{time.Second, "invalid_json", false, 0},
		{0, "oversized", true, 0}, // keys are limited apart
		{time.Second, "invalid_json", false, 0},
		{8 * time.Second, "invalid_json", true, 3}, // 11 s after the first: says how many it held back
		{time.Second, "invalid_json", false, 0},
		{20 * time.Second, "invalid_json", true, 1},
	}
	for i, s := range steps {
		clock = clock.Add(s.after)
		suppressed, ok := l.allow(s.key)
		if ok != s.wantOK || suppressed != s.wantSuppressed {
			t.Errorf("step %d (%s): allow = %d, %v; want %d, %v", i, s.key, suppressed, ok, s.wantSuppressed, s.wantOK)
		}
	}
}
