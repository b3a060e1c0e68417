package influxdb

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

// request is what the fake server saw of one write.
type request struct {
	query    map[string]string
	auth     string
	encoding string
	body     string // decompressed
}

// fakeInflux answers writes with respond (nil: 204) and records them.
type fakeInflux struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []request
	respond func(n int, w http.ResponseWriter) bool // true: it answered
}

func newFake(t *testing.T, respond func(n int, w http.ResponseWriter) bool) *fakeInflux {
	f := &fakeInflux{t: t, respond: respond}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeInflux) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v2/write" || r.Method != http.MethodPost {
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusTeapot)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	q := map[string]string{}
	for k := range r.URL.Query() {
		q[k] = r.URL.Query().Get(k)
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, request{query: q, auth: r.Header.Get("Authorization"), encoding: r.Header.Get("Content-Encoding"), body: string(data)})
	n := len(f.reqs)
	f.mu.Unlock()
	if f.respond != nil && f.respond(n, w) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeInflux) requests() []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]request(nil), f.reqs...)
}

func newSink(t *testing.T, cfg Config) *Sink {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func someSamples(n int) []collector.Sample {
	out := make([]collector.Sample, n)
	for i := range out {
		out[i] = sample(mill1, "cnc", "power_w", collector.Float(float64(i)), t0.Add(time.Duration(i)*time.Millisecond))
	}
	return out
}

func TestWriteErrors(t *testing.T) {
	const conflict = `partial write: field type conflict: input field "power_w" on measurement "machine" is type string, already exists as type float dropped=1`
	cases := []struct {
		name       string
		status     int
		header     map[string]string
		body       string
		retryable  bool
		retryAfter time.Duration
		contains   []string
	}{
		{name: "503 with Retry-After", status: 503, header: map[string]string{"Retry-After": "7"}, retryable: true, retryAfter: 7 * time.Second, contains: []string{"503"}},
		{name: "429", status: 429, retryable: true, contains: []string{"429", "rate limiting"}},
		{name: "429 with an HTTP-date", status: 429, header: map[string]string{"Retry-After": time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)}, retryable: true, retryAfter: 90 * time.Second},
		{name: "500", status: 500, body: "boom", retryable: true, contains: []string{"500", "boom"}},
		{name: "400 from InfluxDB 2", status: 400, header: map[string]string{"Content-Type": "application/json"},
			body:     `{"code":"invalid","message":"` + strings.ReplaceAll(conflict, `"`, `\"`) + `"}`,
			contains: []string{"refused the batch", "(400)", conflict, "cannot be written as is"}},
		{name: "400 from InfluxDB 1.8", status: 400, header: map[string]string{"Content-Type": "application/json", "X-Influxdb-Error": conflict},
			body:     `{"error":"` + strings.ReplaceAll(conflict, `"`, `\"`) + `"}`,
			contains: []string{"(400)", conflict}},
		{name: "401", status: 401, header: map[string]string{"Content-Type": "application/json"}, body: `{"code":"unauthorized","message":"unauthorized access"}`,
			retryable: true, contains: []string{"(401)", "unauthorized access", "token", "retried"}},
		{name: "404 bucket", status: 404, header: map[string]string{"Content-Type": "application/json"}, body: `{"code":"not found","message":"bucket \"nope\" not found"}`,
			retryable: true, contains: []string{"(404)", `bucket "nope" not found`, "create it", "retried"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, func(_ int, w http.ResponseWriter) bool {
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
				return true
			})
			s := newSink(t, Config{URL: f.srv.URL, Bucket: "b"})
			err := s.Write(context.Background(), someSamples(3))
			if err == nil {
				t.Fatal("Write succeeded")
			}
			retryAfter, retryable := collector.IsRetryable(err)
			if retryable != tc.retryable {
				t.Errorf("retryable = %v, want %v: %v", retryable, tc.retryable, err)
			}
			// An HTTP-date is converted against the clock: allow a little.
			if d := retryAfter - tc.retryAfter; d < -2*time.Second || d > 0 {
				t.Errorf("RetryAfter = %s, want %s", retryAfter, tc.retryAfter)
			}
			for _, c := range append(tc.contains, f.srv.URL, `"b"`) {
				if !strings.Contains(err.Error(), c) {
					t.Errorf("error %q does not contain %q", err, c)
				}
			}
			var we *WriteError
			if !errors.As(err, &we) || we.StatusCode != tc.status {
				t.Errorf("want a *WriteError with status %d, got %#v", tc.status, err)
			}
		})
	}
}

func TestWriteNoAnswer(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		s := newSink(t, Config{URL: "http://" + addr, Bucket: "db/rp"})
		err = s.Write(context.Background(), someSamples(1))
		if _, ok := collector.IsRetryable(err); !ok {
			t.Fatalf("want retryable, got %v", err)
		}
		if !strings.Contains(err.Error(), "cannot be reached") || !strings.Contains(err.Error(), addr) {
			t.Errorf("error %q should say the server cannot be reached, with its URL", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		release := make(chan struct{})
		f := newFake(t, func(_ int, w http.ResponseWriter) bool {
			<-release
			return false
		})
		defer close(release)
		s := newSink(t, Config{URL: f.srv.URL, Bucket: "b", Timeout: 100 * time.Millisecond})
		start := time.Now()
		err := s.Write(context.Background(), someSamples(1))
		if _, ok := collector.IsRetryable(err); !ok {
			t.Fatalf("want retryable, got %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("timeout of 100ms took %s", d)
		}
	})
	t.Run("context ends", func(t *testing.T) {
		f := newFake(t, nil)
		s := newSink(t, Config{URL: f.srv.URL, Bucket: "b"})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := s.Write(ctx, someSamples(1))
		if _, ok := collector.IsRetryable(err); !ok || !errors.Is(err, context.Canceled) {
			t.Fatalf("want a retryable error wrapping context.Canceled, got %v", err)
		}
	})
}

func TestWriteRequest(t *testing.T) {
	no, yes := false, true
	for _, tc := range []struct {
		name string
		gzip *bool
		enc  string
	}{{"not on loopback by default", nil, ""}, {"gzip on", &yes, "gzip"}, {"gzip off", &no, ""}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, nil)
			s := newSink(t, Config{URL: f.srv.URL, Bucket: "line-data", Org: "noordoostpolder", Token: "s3cret", Gzip: tc.gzip, Measurement: "m"})
			samples := []collector.Sample{
				sample(mill1, "cnc", "power_w", collector.Float(1.5), t0),
				sample(mill1, "cnc", "state", collector.String("running"), t0),
				sample(mill1, "cnc", "power_w", collector.Float(2), t0.Add(time.Second)),
			}
			if err := s.Write(context.Background(), samples); err != nil {
				t.Fatal(err)
			}
			want, _, err := AppendLines(nil, "m", samples)
			if err != nil {
				t.Fatal(err)
			}
			reqs := f.requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.encoding != tc.enc {
				t.Errorf("Content-Encoding %q, want %q", r.encoding, tc.enc)
			}
			if r.body != string(want) {
				t.Errorf("body\n%s\nwant\n%s", r.body, want)
			}
			if r.auth != "Token s3cret" {
				t.Errorf("Authorization %q", r.auth)
			}
			for k, v := range map[string]string{"bucket": "line-data", "org": "noordoostpolder", "precision": "ns"} {
				if r.query[k] != v {
					t.Errorf("query %s=%q, want %q", k, r.query[k], v)
				}
			}
		})
	}
	t.Run("no token, no Authorization", func(t *testing.T) {
		f := newFake(t, nil)
		s := newSink(t, Config{URL: f.srv.URL, Bucket: "db/autogen"})
		if err := s.Write(context.Background(), someSamples(1)); err != nil {
			t.Fatal(err)
		}
		if a := f.requests()[0].auth; a != "" {
			t.Errorf("Authorization %q sent without a token", a)
		}
	})
}

func TestWriteSplitsBatches(t *testing.T) {
	cases := []struct {
		name      string
		samples   []collector.Sample
		batchSize int
		respond   func(n int, w http.ResponseWriter) bool
		wantLines []int
		wantErr   string
	}{
		{name: "12000 points in 5000s", samples: someSamples(12000), batchSize: 5000, wantLines: []int{5000, 5000, 2000}},
		{name: "exact multiple", samples: someSamples(10), batchSize: 5, wantLines: []int{5, 5}},
		{name: "points, not samples, count", samples: benchSamples()[:600], batchSize: 40, wantLines: []int{40, 40, 20}},
		{name: "a refused request does not stop the others", samples: someSamples(9), batchSize: 3,
			respond: func(n int, w http.ResponseWriter) bool {
				if n == 2 {
					w.Header().Set("X-Influxdb-Error", "partial write: field type conflict")
					w.WriteHeader(400)
					return true
				}
				return false
			},
			wantLines: []int{3, 3, 3}, wantErr: "(3 points of the same call were stored before)"},
		{name: "a missing bucket stops at once", samples: someSamples(9), batchSize: 3,
			respond: func(n int, w http.ResponseWriter) bool {
				w.WriteHeader(404)
				return true
			},
			wantLines: []int{3}, wantErr: "404"},
		{name: "a retryable failure returns at once", samples: someSamples(9), batchSize: 3,
			respond: func(n int, w http.ResponseWriter) bool {
				if n == 2 {
					w.WriteHeader(503)
					return true
				}
				return false
			},
			wantLines: []int{3, 3}, wantErr: "retried"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.respond)
			s := newSink(t, Config{URL: f.srv.URL, Bucket: "b", BatchSize: tc.batchSize})
			err := s.Write(context.Background(), tc.samples)
			if tc.wantErr == "" && err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			var got []int
			var all bytes.Buffer
			for _, r := range f.requests() {
				got = append(got, strings.Count(r.body, "\n"))
				all.WriteString(r.body)
			}
			if !equalInts(got, tc.wantLines) {
				t.Errorf("lines per request %v, want %v", got, tc.wantLines)
			}
			if tc.respond == nil {
				want, _, _ := AppendLines(nil, "machine", tc.samples)
				if all.String() != string(want) {
					t.Error("the requests together do not hold exactly the encoded samples")
				}
			}
		})
	}
}

func TestWriteSkipsInvalidSamples(t *testing.T) {
	f := newFake(t, nil)
	var logs bytes.Buffer
	s, err := New(Config{URL: f.srv.URL, Bucket: "b"}, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	samples := someSamples(2)
	samples[0].Value = collector.Float(math.NaN())
	var ue *collector.UnwritableError
	if err := s.Write(context.Background(), samples); !errors.As(err, &ue) || ue.Samples != 1 {
		t.Fatalf("Write = %v, want the batch stored and one unwritable sample reported", err)
	}
	if _, retry := collector.IsRetryable(ue); retry {
		t.Fatal("an unwritable sample must not be retried")
	}
	if r := f.requests(); len(r) != 1 || strings.Count(r[0].body, "\n") != 1 {
		t.Fatalf("requests %+v, want one with the valid line", r)
	}
	if !strings.Contains(logs.String(), "skipped=1") || !strings.Contains(logs.String(), "NaN") {
		t.Errorf("the skipped sample was not logged: %s", logs.String())
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestConfig(t *testing.T) {
	t.Run("defaults and gzip from YAML", func(t *testing.T) {
		for _, tc := range []struct {
			yaml string
			gzip bool
		}{
			{"url: http://localhost:8086\nbucket: db/autogen\n", false},
			{"url: http://127.0.0.1:8086\nbucket: db/autogen\n", false},
			{"url: https://influx.example:8086\nbucket: db/autogen\n", true},
			{"url: http://10.1.2.3:8086\nbucket: db/autogen\n", true},
			{"url: http://localhost:8086\nbucket: db/autogen\ngzip: false\n", false},
			{"url: http://localhost:8086\nbucket: db/autogen\ngzip: true\n", true},
		} {
			var c Config
			if err := config.Parse("influx.yaml", []byte(tc.yaml), &c, nil); err != nil {
				t.Fatal(err)
			}
			if c.UseGzip() != tc.gzip {
				t.Errorf("%q: UseGzip %v, want %v", tc.yaml, c.UseGzip(), tc.gzip)
			}
			if c.Measurement != "machine" || c.Timeout != 10*time.Second || c.BatchSize != 5000 || c.FlushInterval != time.Second || c.MaxInFlight != 2 {
				t.Errorf("defaults not applied: %+v", c)
			}
		}
	})
	t.Run("every problem at once", func(t *testing.T) {
		c := Config{URL: "ftp://x", Measurement: "bad\tname", Timeout: -1, BatchSize: -5, FlushInterval: -1, MaxInFlight: 17, TLS: TLSConfig{CAFile: "/nonexistent/ca.pem"}}
		err := c.Validate()
		keys := map[string]bool{}
		for _, e := range config.Flatten(err) {
			var fe *config.FieldError
			if !errors.As(e, &fe) {
				t.Errorf("not a FieldError: %v", e)
				continue
			}
			keys[fe.Key] = true
		}
		for _, k := range []string{"url", "bucket", "measurement", "timeout", "batch_size", "flush_interval", "max_in_flight", "tls.ca_file"} {
			if !keys[k] {
				t.Errorf("no error for %s in %v", k, err)
			}
		}
	})
	t.Run("New refuses an invalid config", func(t *testing.T) {
		if _, err := New(Config{URL: "localhost:8086"}); err == nil {
			t.Error("New accepted a URL without scheme and no bucket")
		}
	})

}

// TestConcurrentWritesKeepTheirOwnBodies: the pipeline writes several
// batches at once; each request must carry exactly its own batch, not
// lines of another write that shared an encoding buffer.
func TestConcurrentWritesKeepTheirOwnBodies(t *testing.T) {
	f := newFake(t, nil)
	s := newSink(t, Config{URL: f.srv.URL, Bucket: "b", Gzip: new(bool)})
	const writers, rounds, points = 4, 25, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for r := range rounds {
				samples := make([]collector.Sample, points)
				for i := range samples {
					// The value names writer and round, the time the point.
					samples[i] = sample(mill1, "cnc", "power_w", collector.Float(float64(w*1000+r)), t0.Add(time.Duration(i)*time.Second))
				}
				if err := s.Write(context.Background(), samples); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	reqs := f.requests()
	if len(reqs) != writers*rounds {
		t.Fatalf("%d requests, want %d", len(reqs), writers*rounds)
	}
	seen := map[string]bool{}
	for _, req := range reqs {
		lines := strings.Split(strings.TrimSuffix(req.body, "\n"), "\n")
		if len(lines) != points {
			t.Fatalf("a request holds %d lines, want %d:\n%s", len(lines), points, req.body)
		}
		_, first, _ := strings.Cut(lines[0], "power_w=")
		value, _, _ := strings.Cut(first, " ")
		for _, l := range lines {
			if !strings.Contains(l, "power_w="+value+" ") {
				t.Fatalf("a request mixes batches: %q and %q", lines[0], l)
			}
		}
		if seen[value] {
			t.Errorf("batch %s sent twice", value)
		}
		seen[value] = true
	}
}

// TestWriteBodyOutlivesAnEarlyAnswer: a server that answers before it has
// read the request may leave Go's transport still sending the body after
// Write returned. The next writes must neither disturb that body (the race
// detector watches) nor send anything but their own lines; after normal
// answers the encoding buffers are reused rather than reallocated.
func TestWriteBodyOutlivesAnEarlyAnswer(t *testing.T) {
	for _, gz := range []bool{false, true} {
		t.Run(fmt.Sprintf("gzip %v", gz), func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) == 1 {
					// Answer at once, body unread, and drop the connection.
					w.Header().Set("Connection", "close")
					http.Error(w, "busy", http.StatusServiceUnavailable)
					return
				}
				var body io.Reader = r.Body
				if r.Header.Get("Content-Encoding") == "gzip" {
					zr, err := gzip.NewReader(r.Body)
					if err != nil {
						t.Error(err)
						return
					}
					body = zr
				}
				data, _ := io.ReadAll(body)
				if !strings.HasPrefix(string(data), "machine,") || strings.Count(string(data), "\n") != 2000 {
					t.Errorf("request %d: %d lines, starting %.40q", calls.Load(), strings.Count(string(data), "\n"), data)
				}
				w.WriteHeader(http.StatusNoContent)
			}))
			defer srv.Close()
			s := newSink(t, Config{URL: srv.URL, Bucket: "b", Gzip: &gz})
			if err := s.Write(context.Background(), someSamples(2000)); err == nil {
				t.Fatal("the first write was answered 503 and did not fail")
			}
			for range 5 {
				if err := s.Write(context.Background(), someSamples(2000)); err != nil {
					t.Fatal(err)
				}
			}
			s.mu.Lock()
			kept := len(s.idle) == 1 && cap(s.idle[0].buf) > 0
			s.mu.Unlock()
			if !kept {
				t.Error("after answered writes the encoding holds no buffer to reuse")
			}
		})
	}
}
