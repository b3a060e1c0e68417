package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/queue"
)

// write is the single consumer of the queue: it reads records into
// batches of up to BatchSize samples, waits at most FlushInterval for a
// batch to fill (after a full batch only until the stream pauses for
// burstGap), writes it to the sink and acknowledges the records once
// the sink confirmed them. Up to MaxInFlight batches are written at once,
// so the database works on one while the next is read and encoded; they
// are acknowledged in queue order. After draining is closed it writes
// what is left without waiting and returns when the queue is empty; ctx
// ending stops it at once, leaving unconfirmed records in the queue.
func (p *Pipeline) write(ctx context.Context, draining <-chan struct{}) {
	var (
		dec      RecordDecoder
		recs     []queue.Record
		readErrs = newRateLimiter(time.Minute)
		bo       = p.newBackoff()
		flights  inFlight
		b        = flights.batch(p.cfg.BatchSize)
		lastFull bool // the batch written last was full
	)
	// What is in flight when the writer stops is waited for, and what the
	// sink confirmed is acknowledged.
	defer func() {
		p.landAll(&flights)
		flights.wait()
	}()
	isDraining := func() bool {
		select {
		case <-draining:
			return true
		default:
			return false
		}
	}
	for ctx.Err() == nil {
		// Fill a batch.
		for len(b.samples) < p.cfg.BatchSize {
			var err error
			recs, err = p.queue.Read(recs, p.cfg.BatchSize-len(b.samples))
			if err != nil {
				if errors.Is(err, queue.ErrClosed) {
					return
				}
				if _, ok := readErrs.allow("read"); ok {
					p.log.Error("queue: cannot read; retrying", "sink", p.sink.Name, "err", err)
				}
				// Rewinding goes back to the acknowledged position, so
				// what is in flight must land first.
				if !p.landAll(&flights) {
					return
				}
				p.queue.Rewind()
				b.reset()
				if !sleep(ctx, bo.NextBackOff()) {
					return
				}
				continue
			}
			for _, r := range recs {
				n := len(b.samples)
				b.samples, err = dec.Decode(r.Data, b.samples)
				if err != nil {
					// Written by this program and checksummed, so this is
					// a bug or a format change; the record cannot be sent.
					b.samples = b.samples[:n]
					p.metrics.corruptRecords.WithLabelValues(p.sink.Name).Inc()
					p.log.Error("queue: a record cannot be decoded; skipped", "sink", p.sink.Name, "err", err)
				}
				r.Data = nil
				b.pending = append(b.pending, r)
				b.weights = append(b.weights, len(b.samples)-n)
			}
			if len(recs) > 0 {
				continue
			}
			if len(b.pending) == 0 {
				if isDraining() {
					return // the deferred landing waits for what is in flight
				}
				select {
				case <-p.queue.Notify():
				case <-flights.oldest():
					if !p.land(&flights) {
						return
					}
				case <-draining:
				case <-ctx.Done():
					return
				}
				continue
			}
			deadline := b.pending[0].Appended.Add(p.cfg.FlushInterval)
			if lastFull {
				// The previous batch was full, so data was streaming in;
				// once the stream pauses, its tail goes out at once
				// instead of waiting out the flush interval.
				deadline = minTime(deadline, b.pending[len(b.pending)-1].Appended.Add(burstGap))
			}
			wait := time.Until(deadline)
			if wait <= 0 || isDraining() {
				break
			}
			t := time.NewTimer(wait)
			select {
			case <-p.queue.Notify():
			case <-t.C:
			case <-flights.oldest():
				if !p.land(&flights) {
					t.Stop()
					return
				}
			case <-draining:
			case <-ctx.Done():
				t.Stop()
				return
			}
			t.Stop()
		}
		if len(b.pending) == 0 {
			continue
		}
		if p.limiter != nil && p.queue.Stats().Weight > int64(2*p.cfg.BatchSize) {
			if err := p.limiter.WaitN(ctx, len(b.samples)); err != nil {
				return
			}
		}
		lastFull = len(b.samples) >= p.cfg.BatchSize
		flights.launch(b, func(b *batch) bool { return p.send(ctx, b.samples, b.weights) })
		for len(flights.sending) >= p.cfg.MaxInFlight {
			if !p.land(&flights) {
				return // shutdown deadline: the records stay queued
			}
		}
		b = flights.batch(p.cfg.BatchSize)
		bo.Reset()
	}
}

// burstGap is how long the writer waits for more after a full batch
// before it writes a partial one: longer than the pauses inside a stream
// (a garbage collection, a busy core), short beside FlushInterval.
const burstGap = 20 * time.Millisecond

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// land waits for the oldest batch in flight and acknowledges its records.
// It reports false when that batch was not confirmed because ctx ended.
func (p *Pipeline) land(f *inFlight) bool {
	b := f.sending[0]
	<-b.done
	if !b.sent {
		return false
	}
	f.sending = f.sending[1:]
	if err := p.queue.Ack(b.pending); err != nil {
		p.log.Error("queue: cannot record delivery; these samples may be sent again after a restart", "sink", p.sink.Name, "err", err)
	}
	b.reset()
	f.free = append(f.free, b)
	return true
}

// landAll lands every batch in flight, oldest first, and reports false
// at the first that was not confirmed.
func (p *Pipeline) landAll(f *inFlight) bool {
	for len(f.sending) > 0 {
		if !p.land(f) {
			return false
		}
	}
	return true
}

// batch is one sink write with the queue records it came from.
type batch struct {
	samples []Sample
	weights []int          // samples per record, for bisecting a refusal
	pending []queue.Record // Data not kept
	sent    bool
	done    chan struct{}
}

func (b *batch) reset() {
	clear(b.samples) // let strings go
	b.samples, b.weights, b.pending = b.samples[:0], b.weights[:0], b.pending[:0]
}

// inFlight is the writer's batches being written, oldest first, and
// those it may reuse.
type inFlight struct {
	sending []*batch
	free    []*batch
	wg      sync.WaitGroup
}

func (f *inFlight) batch(size int) *batch {
	if n := len(f.free); n > 0 {
		b := f.free[n-1]
		f.free = f.free[:n-1]
		return b
	}
	return &batch{samples: make([]Sample, 0, size)}
}

func (f *inFlight) launch(b *batch, send func(*batch) bool) {
	b.sent, b.done = false, make(chan struct{})
	f.sending = append(f.sending, b)
	f.wg.Go(func() {
		b.sent = send(b)
		close(b.done)
	})
}

// oldest is closed when the oldest batch in flight is done; nil (never
// ready) when none is.
func (f *inFlight) oldest() <-chan struct{} {
	if len(f.sending) == 0 {
		return nil
	}
	return f.sending[0].done
}

func (f *inFlight) wait() { f.wg.Wait() }

// send writes samples, whose records have the given sample counts, until
// the sink has confirmed or refused every one of them. A refused batch is
// split in halves, by records and then, within a record (which may hold
// several messages), by samples, until the refused samples are found;
// they go to the dead-letter file and the rest is written. It returns
// false only when ctx ended first.
func (p *Pipeline) send(ctx context.Context, samples []Sample, weights []int) bool {
	err := p.writeRetrying(ctx, samples)
	if err == nil {
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	if len(weights) <= 1 {
		if len(samples) <= 1 {
			p.deadLetter(samples, err)
			return true
		}
		mid := len(samples) / 2
		return p.send(ctx, samples[:mid], nil) && p.send(ctx, samples[mid:], nil)
	}
	mid, k := len(weights)/2, 0
	for _, w := range weights[:mid] {
		k += w
	}
	return p.send(ctx, samples[:k], weights[:mid]) && p.send(ctx, samples[k:], weights[mid:])
}

// writeRetrying writes one batch, retrying transient errors with capped,
// jittered backoff (at least the server's Retry-After) until it is stored,
// refused (the refusal is returned) or ctx ends (ctx's error).
func (p *Pipeline) writeRetrying(ctx context.Context, batch []Sample) error {
	if len(batch) == 0 {
		return nil
	}
	name := p.sink.Name
	var bo interface{ NextBackOff() time.Duration }
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := p.sink.Sink.Write(ctx, batch)
		p.metrics.batchLatency.WithLabelValues(name).Observe(time.Since(start).Seconds())
		if err == nil {
			p.metrics.pointsWritten.WithLabelValues(name).Add(float64(len(batch)))
			lat, now := p.metrics.latency.WithLabelValues(name), time.Now()
			for i := range batch {
				if batch[i].Window == "" && !batch[i].SourceTime.IsZero() {
					lat.Observe(now.Sub(batch[i].SourceTime).Seconds())
				}
			}
			if attempt > 1 {
				p.log.Info("sink recovered", "sink", name, "attempts", attempt)
			}
			p.sinkSt.set(true, nil)
			return nil
		}
		var unwritable *UnwritableError
		if errors.As(err, &unwritable) {
			// Stored, except what the sink cannot represent: done.
			p.metrics.pointsWritten.WithLabelValues(name).Add(float64(len(batch) - unwritable.Samples))
			p.metrics.dropped.WithLabelValues(name, "unwritable").Add(float64(unwritable.Samples))
			p.sinkSt.set(true, nil)
			return nil
		}
		retryAfter, retryable := IsRetryable(err)
		if !retryable {
			p.metrics.sinkErrors.WithLabelValues(name, "rejected").Inc()
			p.sinkSt.noteError(err)
			return err
		}
		p.metrics.sinkErrors.WithLabelValues(name, "retryable").Inc()
		p.sinkSt.set(false, err)
		if bo == nil {
			bo = p.newBackoff()
		}
		wait := max(bo.NextBackOff(), retryAfter)
		if attempt == 1 || attempt%10 == 0 {
			st := p.queue.Stats()
			p.log.Warn("sink write failed; retrying, data stays queued", "sink", name, "attempt", attempt, "wait", wait,
				"queued_samples", st.Weight, "err", err)
		}
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// deadLetter keeps samples the sink refused, with the reason, so they
// never block the queue and a person can see and replay them.
func (p *Pipeline) deadLetter(samples []Sample, reason error) {
	name := p.sink.Name
	path, err := p.dead.write(samples, reason)
	if err != nil {
		p.metrics.dropped.WithLabelValues(name, "dead_letter_failed").Add(float64(len(samples)))
		p.log.Error("sink refused samples and the dead-letter file cannot be written; they are lost", "sink", name,
			"samples", len(samples), "reason", reason, "err", err)
		return
	}
	p.metrics.deadLetters.WithLabelValues(name).Add(float64(len(samples)))
	p.log.Error("sink refused samples; kept in the dead-letter file", "sink", name, "samples", len(samples), "file", path, "reason", reason)
}

// deadLetters appends refused samples to <dir>/<sink>.jsonl, one JSON
// object per refused batch: when, why, and the samples.
type deadLetters struct {
	dir, sink string
	mu        sync.Mutex
}

// DeadLetter is one line of the dead-letter file.
type DeadLetter struct {
	Time    time.Time          `json:"time"`
	Sink    string             `json:"sink"`
	Reason  string             `json:"reason"`
	Samples []DeadLetterSample `json:"samples"`
}

// DeadLetterSample is a sample as the dead-letter file keeps it.
type DeadLetterSample struct {
	Site        string    `json:"site,omitempty"`
	Area        string    `json:"area,omitempty"`
	Line        string    `json:"line,omitempty"`
	Machine     string    `json:"machine"`
	MachineType string    `json:"machine_type,omitempty"`
	Signal      string    `json:"signal"`
	Kind        string    `json:"kind"`
	Value       string    `json:"value"`
	Unit        string    `json:"unit,omitempty"`
	Quality     string    `json:"quality"`
	SourceTime  time.Time `json:"source_time"`
}

func (d *deadLetters) write(samples []Sample, reason error) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	line := DeadLetter{Time: time.Now().UTC(), Sink: d.sink, Reason: reason.Error(), Samples: make([]DeadLetterSample, len(samples))}
	for i, s := range samples {
		line.Samples[i] = DeadLetterSample{
			Site: s.Asset.Site, Area: s.Asset.Area, Line: s.Asset.Line, Machine: s.Asset.Machine, MachineType: s.MachineType,
			Signal: s.Signal, Kind: s.Value.Kind().String(), Value: s.Value.Format(), Unit: s.Unit,
			Quality: s.Quality.String(), SourceTime: s.SourceTime,
		}
	}
	b, err := json.Marshal(line)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(d.dir, 0o750); err != nil {
		return "", err
	}
	path := filepath.Join(d.dir, d.sink+".jsonl")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return "", err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("dead-letter file %s: %w", path, err)
	}
	return path, nil
}
