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
// batch to fill, writes it to the sink and acknowledges the records once
// the sink confirmed them. After draining is closed it writes what is left
// without waiting and returns when the queue is empty; ctx ending stops it
// at once, leaving unconfirmed records in the queue.
func (p *Pipeline) write(ctx context.Context, draining <-chan struct{}) {
	var (
		dec      RecordDecoder
		recs     []queue.Record
		pending  []queue.Record // read, not yet confirmed (Data not kept)
		weights  []int
		samples  = make([]Sample, 0, p.cfg.BatchSize)
		readErrs = newRateLimiter(time.Minute)
		bo       = p.newBackoff()
	)
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
		for len(samples) < p.cfg.BatchSize {
			var err error
			recs, err = p.queue.Read(recs, p.cfg.BatchSize-len(samples))
			if err != nil {
				if errors.Is(err, queue.ErrClosed) {
					return
				}
				if _, ok := readErrs.allow("read"); ok {
					p.log.Error("queue: cannot read; retrying", "sink", p.sink.Name, "err", err)
				}
				p.queue.Rewind()
				pending, weights, samples = pending[:0], weights[:0], samples[:0]
				if !sleep(ctx, bo.NextBackOff()) {
					return
				}
				continue
			}
			for _, r := range recs {
				n := len(samples)
				samples, err = dec.Decode(r.Data, samples)
				if err != nil {
					// Written by this program and checksummed, so this is
					// a bug or a format change; the record cannot be sent.
					samples = samples[:n]
					p.metrics.corruptRecords.WithLabelValues(p.sink.Name).Inc()
					p.log.Error("queue: a record cannot be decoded; skipped", "sink", p.sink.Name, "err", err)
				}
				r.Data = nil
				pending = append(pending, r)
				weights = append(weights, len(samples)-n)
			}
			if len(recs) > 0 {
				continue
			}
			if len(pending) == 0 {
				if isDraining() {
					return
				}
				select {
				case <-p.queue.Notify():
				case <-draining:
				case <-ctx.Done():
					return
				}
				continue
			}
			wait := time.Until(pending[0].Appended.Add(p.cfg.FlushInterval))
			if wait <= 0 || isDraining() {
				break
			}
			t := time.NewTimer(wait)
			select {
			case <-p.queue.Notify():
			case <-t.C:
			case <-draining:
			case <-ctx.Done():
				t.Stop()
				return
			}
			t.Stop()
		}
		if len(pending) == 0 {
			continue
		}
		if p.limiter != nil && p.queue.Stats().Weight > int64(2*p.cfg.BatchSize) {
			if err := p.limiter.WaitN(ctx, len(samples)); err != nil {
				return
			}
		}
		if !p.send(ctx, samples, weights) {
			return // shutdown deadline: the records stay queued
		}
		if err := p.queue.Ack(pending); err != nil {
			p.log.Error("queue: cannot record delivery; these samples may be sent again after a restart", "sink", p.sink.Name, "err", err)
		}
		pending, weights, samples = pending[:0], weights[:0], samples[:0]
		bo.Reset()
	}
}

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
