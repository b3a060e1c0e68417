// Package influxdb is the sink that writes samples to InfluxDB through the
// v2 write API, so one code path serves InfluxDB 1.8 (bucket "db/rp"), 2.x,
// 3.x and Cloud.
//
// The sink does not retry by itself: it classifies each failure as
// retryable (network, timeout, 5xx, 429 with the server's Retry-After, and
// 401/403/404, which a person must fix and which say nothing about the
// data) or as a refusal of the batch (400, 413, 422), and the pipeline
// decides.
package influxdb

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	influxhttp "github.com/influxdata/influxdb-client-go/v2/api/http"

	"github.com/noordoostpolder/shopfloor/collector"
)

// Sink writes samples to one InfluxDB bucket. It implements
// collector.Sink; Write may be called from several goroutines at once,
// each request then on its own connection.
type Sink struct {
	cfg       Config
	log       *slog.Logger
	client    influxdb2.Client
	http      influxhttp.Service
	writeURL  string
	transport *http.Transport

	// idle holds the encoders of finished writes: each keeps its grown
	// buffer (a batch's line protocol, most of a megabyte), which a
	// sync.Pool would hand to the garbage collector every cycle.
	mu   sync.Mutex
	idle []*encoding
}

// encoding is one write's scratch space: the line protocol and, with
// gzip, its compressed form.
type encoding struct {
	enc lineEncoder
	buf []byte
	gz  bytes.Buffer
	zw  *gzip.Writer
}

func (s *Sink) encoding() *encoding {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.idle); n > 0 {
		e := s.idle[n-1]
		s.idle = s.idle[:n-1]
		return e
	}
	return &encoding{}
}

func (s *Sink) release(e *encoding) {
	s.mu.Lock()
	s.idle = append(s.idle, e)
	s.mu.Unlock()
}

var _ collector.Sink = (*Sink)(nil)

// Option tunes a Sink beyond its Config.
type Option func(*Sink)

// WithLogger sets where the sink reports samples it had to leave out
// (see AppendLines). The default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(s *Sink) {
		if l != nil {
			s.log = l
		}
	}
}

// New checks cfg and prepares the client. It does not contact the server:
// the agent must start while InfluxDB is down, and the first Write reports
// what is wrong.
func New(cfg Config, opts ...Option) (*Sink, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("influxdb: %w", err)
	}
	var tlsConf *tls.Config
	if cfg.TLS.CAFile != "" || cfg.TLS.InsecureSkipVerify {
		tlsConf = &tls.Config{InsecureSkipVerify: cfg.TLS.InsecureSkipVerify} //nolint:gosec // the user asked for it
		if cfg.TLS.CAFile != "" {
			pool, err := loadCA(cfg.TLS.CAFile)
			if err != nil {
				return nil, fmt.Errorf("influxdb: tls.ca_file: %w", err)
			}
			tlsConf.RootCAs = pool
		}
	}
	// Our own transport, so the timeout is ours, idle connections can be
	// closed, and nothing is shared with http.DefaultClient.
	transport := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: cfg.Timeout,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: max(cfg.MaxInFlight, 1),
		IdleConnTimeout:     90 * time.Second,
	}
	// The client is used for its HTTP service (authorization, user agent,
	// error parsing); the sink builds and posts the write requests itself,
	// so the client's write options (gzip, precision, batching, retries)
	// do not apply.
	opt := influxdb2.DefaultOptions().
		SetHTTPClient(&http.Client{Timeout: cfg.Timeout, Transport: transport}).
		SetApplicationName("shopfloor")
	client := influxdb2.NewClientWithOptions(cfg.URL, cfg.Token.Reveal(), opt)
	// The write endpoint as the client's own write API builds it; the
	// sink posts to it itself so that a request body is sent from the
	// encoding buffer without a copy (see post).
	u, err := url.Parse(client.HTTPService().ServerAPIURL())
	if err == nil {
		u, err = u.Parse("write")
	}
	if err != nil {
		return nil, fmt.Errorf("influxdb: url: %w", err)
	}
	u.RawQuery = url.Values{"org": {cfg.Org}, "bucket": {cfg.Bucket}, "precision": {"ns"}}.Encode()
	s := &Sink{
		cfg:       cfg,
		log:       slog.Default(),
		client:    client,
		http:      client.HTTPService(),
		writeURL:  u.String(),
		transport: transport,
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Write stores samples, in requests of at most BatchSize points. It
// returns nil when every point was stored, a *collector.RetryableError
// when the server could not take them now, and another error (a
// *WriteError) when it refused them.
//
// After a retryable failure the pipeline repeats the whole call, so the
// requests that had succeeded are written again; that is harmless because
// a point with the same series and time overwrites itself. After a refusal
// of one request (400: a field type conflict, say) the remaining requests
// are still sent, so one bad point costs as little as possible.
//
// Samples that cannot be encoded at all (NaN, empty names) are left out and
// logged rather than failing the call: retrying cannot fix them. When the
// rest was stored, Write says so with a *collector.UnwritableError, so the
// pipeline counts them instead of calling them written.
func (s *Sink) Write(ctx context.Context, samples []collector.Sample) error {
	e := s.encoding()
	defer s.release(e)
	e.enc.skipped = e.enc.skipped[:0]
	defer s.reportSkipped(&e.enc, len(samples))

	var refused []error
	stored := 0
	for start := 0; start < len(samples); {
		e.enc.kpiMeasurement = s.cfg.KPIMeasurement
		buf, lines, n := e.enc.encode(e.buf[:0], s.cfg.Measurement, samples[start:], s.cfg.BatchSize, start)
		e.buf = buf
		start += n
		if lines == 0 {
			continue
		}
		err := s.post(ctx, e, buf)
		if err == nil {
			stored += lines
			continue
		}
		werr, retryAfter, retryable := s.classify(ctx, err, lines, stored)
		if retryable {
			return &collector.RetryableError{Err: werr, RetryAfter: retryAfter}
		}
		refused = append(refused, werr)
		if werr.StatusCode != http.StatusBadRequest && werr.StatusCode != http.StatusUnprocessableEntity {
			break // size or an odd status: every other request would fail the same way
		}
	}
	if len(refused) == 0 && len(e.enc.skipped) > 0 {
		return &collector.UnwritableError{Samples: len(e.enc.skipped), Err: e.enc.err()}
	}
	return errors.Join(refused...)
}

// post sends body, e's line protocol, as one write request. The request
// reads e's buffers as they are: copying each body (most of a megabyte)
// into a string for the client's write API was a fifth of the agent's
// allocations. Go's transport closes a request body once it has sent it,
// which for an answered request is before the answer; if it has not (an
// answer that came before the body was sent, a failure), it may still
// read it, so e gives those buffers up and grows new ones.
func (s *Sink) post(ctx context.Context, e *encoding, body []byte) error {
	data := body
	if s.cfg.UseGzip() {
		e.gz.Reset()
		if e.zw == nil {
			e.zw = gzip.NewWriter(&e.gz)
		} else {
			e.zw.Reset(&e.gz)
		}
		_, _ = e.zw.Write(body) // a bytes.Buffer does not fail
		_ = e.zw.Close()
		data = e.gz.Bytes()
	}
	rb := &requestBody{Reader: bytes.NewReader(data)}
	herr := s.http.DoPostRequest(ctx, s.writeURL, rb, func(req *http.Request) {
		req.ContentLength = int64(len(data))
		if s.cfg.UseGzip() {
			req.Header.Set("Content-Encoding", "gzip")
		}
	}, func(resp *http.Response) error {
		_, _ = io.Copy(io.Discard, resp.Body) // keeps the connection reusable
		return resp.Body.Close()
	})
	if !rb.closed.Load() {
		e.buf, e.gz = nil, bytes.Buffer{}
	}
	if herr != nil {
		return herr
	}
	return nil
}

// requestBody is a request body that tells when the transport is done
// with it.
type requestBody struct {
	*bytes.Reader
	closed atomic.Bool
}

// Close records that the transport no longer reads the body.
func (b *requestBody) Close() error {
	b.closed.Store(true)
	return nil
}

func (s *Sink) reportSkipped(enc *lineEncoder, total int) {
	if err := enc.err(); err != nil {
		s.log.Warn("samples left out of the InfluxDB write", "url", s.cfg.URL, "bucket", s.cfg.Bucket,
			"skipped", len(enc.skipped), "samples", total, "err", err)
	}
}

// Close releases idle connections. The Sink must not be used afterwards.
func (s *Sink) Close() error {
	s.client.Close()
	s.transport.CloseIdleConnections()
	return nil
}

// WriteError is a failed write request. The sink returns it as is when
// InfluxDB refused the batch, and inside a *collector.RetryableError when a
// retry may succeed.
type WriteError struct {
	URL, Bucket string
	// StatusCode is the HTTP status, or 0 when no answer arrived.
	StatusCode int
	// Reason is the server's explanation, as far as it gave one.
	Reason string
	// Points is the number of points in the failed request; Stored is how
	// many points of the same Write call had been stored before it.
	Points, Stored int
	// Err is the client library's error.
	Err error
	msg string
}

func (e *WriteError) Error() string { return e.msg }

func (e *WriteError) Unwrap() error { return e.Err }

// classify turns the client's error into a *WriteError with a message
// that says what happened and what to do, and decides whether a retry may
// succeed.
func (s *Sink) classify(ctx context.Context, err error, points, stored int) (*WriteError, time.Duration, bool) {
	we := &WriteError{URL: s.cfg.URL, Bucket: s.cfg.Bucket, Points: points, Stored: stored, Err: err}
	where := fmt.Sprintf("InfluxDB at %s (bucket %q)", s.cfg.URL, s.cfg.Bucket)
	var he *influxhttp.Error
	if !errors.As(err, &he) || he.StatusCode == 0 {
		// No answer: refused connection, DNS, TLS, timeout, or our own
		// context ending. None of them says anything about the data.
		cause := err
		if he != nil && he.Err != nil {
			cause = he.Err
		}
		if ctx.Err() != nil {
			we.msg = fmt.Sprintf("write of %d points to %s interrupted: %v", points, where, cause)
		} else {
			we.msg = fmt.Sprintf("%s cannot be reached to write %d points: %v", where, points, cause)
		}
		we.msg += storedNote(stored)
		return we, 0, true
	}
	we.StatusCode = he.StatusCode
	we.Reason = reason(he)
	code := he.StatusCode
	retryable := false
	var retryAfter time.Duration
	switch {
	case code == http.StatusTooManyRequests:
		we.msg = fmt.Sprintf("%s is rate limiting writes (429): %s; %d points will be retried", where, we.Reason, points)
		retryable = true
	case code >= 500:
		we.msg = fmt.Sprintf("%s failed to take %d points (%d): %s; they will be retried", where, points, code, we.Reason)
		retryable = true
	case code == http.StatusBadRequest || code == http.StatusUnprocessableEntity:
		we.msg = fmt.Sprintf("%s refused the batch of %d points (%d): %s; the batch cannot be written as is", where, points, code, we.Reason)
		if strings.Contains(we.Reason, "partial write") {
			we.msg += " (the request's other points were stored)"
		}
	// Credentials and a missing bucket say nothing about the data: every
	// batch would fail the same way until a person fixes the server or
	// the config. Retrying keeps the data (the queue fills and the broker
	// holds the rest) and shows the sink as down, where dropping would
	// lose everything quietly.
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		we.msg = fmt.Sprintf("%s refused the credentials (%d): %s; check token (an InfluxDB 1.8 with auth takes \"user:password\") and that it may write to the bucket; writes are retried until then", where, code, we.Reason)
		retryable = true
	case code == http.StatusNotFound:
		we.msg = fmt.Sprintf("%s has no such bucket or org %q (404): %s; create it, or fix bucket and org (InfluxDB 1.8: bucket \"db/rp\" of an existing database); writes are retried until then", where, s.cfg.Org, we.Reason)
		retryable = true
	case code == http.StatusRequestEntityTooLarge:
		we.msg = fmt.Sprintf("%s refused a request of %d points as too large (413): %s; lower batch_size or raise the server's limit", where, points, we.Reason)
	default:
		we.msg = fmt.Sprintf("%s answered %d to a write of %d points: %s; check url, and any proxy in between", where, code, points, we.Reason)
	}
	we.msg += storedNote(stored)
	if retryable {
		retryAfter = parseRetryAfter(he, time.Now())
	}
	return we, retryAfter, retryable
}

func storedNote(stored int) string {
	if stored == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d points of the same call were stored before)", stored)
}

// reason extracts the server's explanation: the message of a 2.x/3.x JSON
// error, the X-Influxdb-Error header of a 1.8 one, or the body text.
func reason(he *influxhttp.Error) string {
	msg := he.Message
	if msg == "" && he.Header != nil {
		msg = he.Header.Get("X-Influxdb-Error")
	}
	if msg == "" {
		msg = he.Code
	}
	if he.Err != nil { // the body was JSON the client could not decode
		if msg != "" {
			msg += "; "
		}
		msg += "unreadable error body: " + he.Err.Error()
	}
	if msg == "" {
		msg = http.StatusText(he.StatusCode)
	}
	return msg
}

// parseRetryAfter reads Retry-After in both forms RFC 9110 allows; the
// client library only understands whole seconds.
func parseRetryAfter(he *influxhttp.Error, now time.Time) time.Duration {
	if he.Header != nil {
		if v := he.Header.Get("Retry-After"); v != "" {
			if secs, err := strconv.ParseInt(v, 10, 64); err == nil && secs >= 0 {
				return time.Duration(secs) * time.Second
			}
			if t, err := http.ParseTime(v); err == nil {
				if d := t.Sub(now); d > 0 {
					return d
				}
				return 0
			}
		}
	}
	return time.Duration(he.RetryAfter) * time.Second
}
