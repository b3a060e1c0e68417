package collectortest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
)

// Running is a source's Run in the background of a test.
type Running struct {
	cancel context.CancelFunc
	done   chan error
}

// Start runs src with out until the test ends or Stop is called; the test
// fails if Run has not returned 15 s after its context ended.
func Start(t testing.TB, src collector.Source, out collector.Output) *Running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- src.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return r
}

// Stop cancels the run and requires Run to return nil, as the Source
// contract says it does after a shutdown.
func (r *Running) Stop(t testing.TB) {
	t.Helper()
	r.cancel()
	if err := r.Wait(t); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
}

// Wait returns Run's error once it has returned, failing the test after
// 15 s.
func (r *Running) Wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup and later calls
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

// WaitConnected waits until out saw n connections reported up.
func WaitConnected(t testing.TB, out *Output, n int) {
	t.Helper()
	Eventually(t, 15*time.Second, func() error {
		ups := 0
		for _, up := range out.ConnectedStates() {
			if up {
				ups++
			}
		}
		if ups < n {
			return fmt.Errorf("%d connections reported up, want %d", ups, n)
		}
		return nil
	})
}
