package collectortest

import (
	"context"
	"sync"

	"github.com/noordoostpolder/shopfloor/collector"
)

// Sink records what is written to it. Fail, when set, decides per call
// whether that write fails and with which error.
type Sink struct {
	mu      sync.Mutex
	samples []collector.Sample
	calls   int
	Fail    func(call int, samples []collector.Sample) error
}

var _ collector.Sink = (*Sink)(nil)

// Write records samples unless Fail returns an error for this call.
func (s *Sink) Write(ctx context.Context, samples []collector.Sample) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.Fail != nil {
		if err := s.Fail(s.calls, samples); err != nil {
			return err
		}
	}
	s.samples = append(s.samples, samples...)
	return nil
}

// Samples returns a copy of every sample written.
func (s *Sink) Samples() []collector.Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]collector.Sample(nil), s.samples...)
}

// Calls is the number of Write calls so far, failed ones included.
func (s *Sink) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}
