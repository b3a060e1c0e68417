package collector

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Batch is what a source hands to the pipeline for one incoming message (an
// MQTT publish, a set of OPC UA notifications).
type Batch struct {
	// Origin is where the batch came from in the source's own terms: the
	// MQTT topic, the OPC UA browse path. Asset rules read it.
	Origin string
	// Samples carry the source's own signal names; normalisation maps them.
	Samples []Sample
}

// Output is how a source delivers data. The pipeline implements it; tests
// use collectortest.Output.
//
// Emit and Bad may be called from several goroutines at once.
type Output interface {
	// Emit normalises the batches and puts them into the queue. It blocks
	// while the queue is full, and returns nil only once the samples are
	// accepted: a source acknowledges its messages to the peer after that
	// and not before. It returns an error when ctx ends first. Several
	// batches in one call cost one queue write, so a source with many
	// small messages at hand should pass them together.
	Emit(ctx context.Context, bs ...Batch) error
	// Bad counts and logs input that could not be used. Reason is a short
	// snake_case label (invalid_json, oversized, ...) used as a metric label.
	Bad(reason string, err error)
	// Connected reports the source's connection state for /readyz and the
	// metrics. err says why it is down and may be nil.
	Connected(up bool, err error)
}

// Source reads one protocol connection.
//
// Run connects and delivers batches to out until ctx is done, then returns
// nil after it stopped taking new input. When the connection breaks it
// returns an error; the pipeline's supervisor calls Run again after a
// backoff, so a source does not reconnect by itself.
type Source interface {
	Run(ctx context.Context, out Output) error
}

// Sink writes normalised samples to a database.
//
// Write is called from one goroutine at a time. It returns nil only when
// every sample was stored. Errors that may pass on a retry (network, 5xx,
// 429) are wrapped in a *RetryableError; any other error means the batch
// itself is refused and retrying it is pointless.
type Sink interface {
	Write(ctx context.Context, samples []Sample) error
}

// UnwritableError reports a write that stored everything except samples
// the sink cannot represent at all (a NaN, a tag value with control
// characters). Retrying cannot fix them, so the pipeline treats the write
// as done and counts them as dropped, reason "unwritable".
type UnwritableError struct {
	Samples int
	Err     error
}

func (e *UnwritableError) Error() string {
	return fmt.Sprintf("%d samples cannot be written: %v", e.Samples, e.Err)
}

func (e *UnwritableError) Unwrap() error { return e.Err }

// RetryableError marks a sink error as transient. RetryAfter, when non-zero,
// is the wait the server asked for.
type RetryableError struct {
	Err        error
	RetryAfter time.Duration
}

func (e *RetryableError) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("%v (retry after %s)", e.Err, e.RetryAfter)
	}
	return e.Err.Error()
}

func (e *RetryableError) Unwrap() error { return e.Err }

// IsRetryable reports whether err, or an error it wraps, is a
// *RetryableError, and the wait it asks for.
func IsRetryable(err error) (retryAfter time.Duration, ok bool) {
	var re *RetryableError
	if errors.As(err, &re) {
		return re.RetryAfter, true
	}
	return 0, false
}
