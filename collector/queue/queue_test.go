package queue

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"
)

func open(t testing.TB, dir string, segBytes, maxBytes int64) *Queue {
	t.Helper()
	q, err := Open(Options{Dir: dir, SegmentBytes: segBytes, MaxBytes: maxBytes})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func rec(i int) []byte {
	return []byte(fmt.Sprintf("record-%06d-%s", i, bytes.Repeat([]byte{'x'}, i%50)))
}

func appendN(t testing.TB, q *Queue, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if err := q.Append(rec(i), i%7+1); err != nil {
			t.Fatal(err)
		}
	}
}

// readAll reads until nothing is unread, acknowledging when ack is set,
// and returns the payloads.
func readAll(t testing.TB, q *Queue, ack bool) []string {
	t.Helper()
	var got []string
	var recs []Record
	for {
		var err error
		recs, err = q.Read(recs, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return got
		}
		for _, r := range recs {
			got = append(got, string(r.Data))
		}
		if ack {
			if err := q.Ack(recs); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func want(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = string(rec(from + i))
	}
	return out
}

func equal(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("record %d = %q, want %q", i, got[i], want[i])
		}
	}
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	sort.Strings(m)
	return m
}

func TestRoundTripAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, 1<<10, 1<<20)
	appendN(t, q, 0, 500)
	if n := len(segments(t, dir)); n < 10 {
		t.Fatalf("%d segments, want many at 1 KiB each", n)
	}
	st := q.Stats()
	if st.Records != 500 || st.Oldest.IsZero() || time.Since(st.Oldest) > time.Minute {
		t.Fatalf("stats %+v, want 500 records and a recent oldest", st)
	}
	equal(t, readAll(t, q, true), want(0, 500))
	if st := q.Stats(); st.Records != 0 || st.Weight != 0 || !st.Oldest.IsZero() {
		t.Fatalf("stats after acking all %+v, want empty", st)
	}
	if n := len(segments(t, dir)); n > 2 {
		t.Errorf("%d segments left after acking everything, want the delivered ones deleted", n)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
}

// After a restart only the unacknowledged records come again, whether the
// consumer had read them or not.
func TestRestartResendsOnlyUnacknowledged(t *testing.T) {
	for _, fsync := range []time.Duration{0, time.Hour} {
		t.Run(fmt.Sprint("fsync_interval=", fsync), func(t *testing.T) {
			dir := t.TempDir()
			q, err := Open(Options{Dir: dir, SegmentBytes: 2 << 10, MaxBytes: 1 << 20, FsyncInterval: fsync})
			if err != nil {
				t.Fatal(err)
			}
			appendN(t, q, 0, 300)
			recs, err := q.Read(nil, 400) // weights 1..7: about 100 records
			if err != nil {
				t.Fatal(err)
			}
			acked := len(recs)
			if err := q.Ack(recs); err != nil {
				t.Fatal(err)
			}
			if _, err := q.Read(nil, 100); err != nil { // read, not acknowledged
				t.Fatal(err)
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}

			q = open(t, dir, 2<<10, 1<<20)
			defer q.Close()
			if st := q.Stats(); st.Records != int64(300-acked) {
				t.Errorf("after restart %d records queued, want %d", st.Records, 300-acked)
			}
			equal(t, readAll(t, q, true), want(acked, 300-acked))
		})
	}
}

func TestTornTailIsSkippedAndCounted(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, 1<<20, 4<<20)
	appendN(t, q, 0, 100)
	q.Close()
	segs := segments(t, dir)
	last := segs[len(segs)-1]
	info, _ := os.Stat(last)
	// A power cut in the middle of the last record.
	if err := os.Truncate(last, info.Size()-5); err != nil {
		t.Fatal(err)
	}

	q = open(t, dir, 1<<20, 4<<20)
	st := q.Stats()
	if st.CorruptRecords != 1 || st.CorruptBytes == 0 {
		t.Errorf("stats %+v, want one damaged record counted", st)
	}
	appendN(t, q, 100, 10) // appends work after recovery
	got := readAll(t, q, true)
	equal(t, got, append(want(0, 99), want(100, 10)...))
	q.Close()
}

func TestFlippedBitSkipsRestOfSegmentOnly(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, 1<<10, 1<<20)
	appendN(t, q, 0, 200)
	q.Close()
	segs := segments(t, dir)
	victim := segs[2]
	b, _ := os.ReadFile(victim)
	b[headerSize+3] ^= 0x40 // first record's payload
	if err := os.WriteFile(victim, b, 0o640); err != nil {
		t.Fatal(err)
	}

	q = open(t, dir, 1<<10, 1<<20)
	defer q.Close()
	got := readAll(t, q, true)
	st := q.Stats()
	if st.CorruptRecords != 1 {
		t.Errorf("corrupt records %d, want 1", st.CorruptRecords)
	}
	if len(got) >= 200 || len(got) < 150 {
		t.Fatalf("got %d records, want all but one segment's", len(got))
	}
	if got[len(got)-1] != string(rec(199)) {
		t.Errorf("last record %q, want the last appended: later segments must still be delivered", got[len(got)-1])
	}
}

// With a bound that overflows, what was dropped is counted exactly: the
// weight delivered plus the weight dropped is the weight appended.
func TestBoundDropsOldestAndCountsExactly(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, 1<<10, 4<<10)
	defer q.Close()
	// A consumer holding records in flight while the drop happens.
	appendN(t, q, 0, 5)
	inFlight, err := q.Read(nil, 12)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, q, 5, 995)

	var appended int64
	for i := 0; i < 1000; i++ {
		appended += int64(i%7 + 1)
	}
	var delivered int64
	for _, r := range inFlight {
		delivered += int64(r.Weight)
	}
	if err := q.Ack(inFlight); err != nil {
		t.Fatal(err)
	}
	var recs []Record
	for {
		recs, err = q.Read(recs, 50)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			delivered += int64(r.Weight)
		}
		if err := q.Ack(recs); err != nil {
			t.Fatal(err)
		}
	}
	st := q.Stats()
	if st.DroppedWeight == 0 {
		t.Fatal("nothing dropped; the bound was not reached")
	}
	if delivered+st.DroppedWeight != appended {
		t.Errorf("delivered %d + dropped %d = %d, want %d appended", delivered, st.DroppedWeight, delivered+st.DroppedWeight, appended)
	}
	if st.Bytes > 4<<10 {
		t.Errorf("%d bytes on disk, over the 4 KiB bound", st.Bytes)
	}
}

func TestConcurrentAppendsGroupCommit(t *testing.T) {
	q := open(t, t.TempDir(), 64<<10, 16<<20)
	defer q.Close()
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := q.Append([]byte(fmt.Sprintf("w%d-%d", w, i)), 1); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var got []string
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		case <-q.Notify():
		case <-time.After(10 * time.Millisecond):
		}
		got = append(got, readAll(t, q, true)...)
	}
	got = append(got, readAll(t, q, true)...)
	if len(got) != writers*each {
		t.Fatalf("read %d records, want %d", len(got), writers*each)
	}
	last := map[string]int{}
	for _, g := range got {
		var w, i int
		fmt.Sscanf(g, "w%d-%d", &w, &i)
		key := fmt.Sprint(w)
		if prev, ok := last[key]; ok && i != prev+1 {
			t.Fatalf("writer %d: record %d after %d; each writer's records must keep their order", w, i, prev)
		}
		last[key] = i
	}
}

func TestDamagedAckFileResendsEverything(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, 1<<20, 4<<20)
	appendN(t, q, 0, 20)
	readAll(t, q, true)
	appendN(t, q, 20, 5)
	q.Close()
	if err := os.WriteFile(filepath.Join(dir, ackFile), []byte("garbage"), 0o640); err != nil {
		t.Fatal(err)
	}
	q = open(t, dir, 1<<20, 4<<20)
	defer q.Close()
	// At least once: duplicates are harmless downstream, loss is not.
	if got := readAll(t, q, true); len(got) < 5 || got[len(got)-1] != string(rec(24)) {
		t.Fatalf("got %d records ending %q, want everything still on disk", len(got), got[len(got)-1])
	}
}

func TestRewind(t *testing.T) {
	q := open(t, t.TempDir(), 1<<10, 1<<20)
	defer q.Close()
	appendN(t, q, 0, 50)
	first, _ := q.Read(nil, 20)
	n := len(first)
	q.Rewind()
	again, _ := q.Read(nil, 20)
	if len(again) != n || string(again[0].Data) != string(rec(0)) {
		t.Fatalf("after rewind read %d records starting %q, want %d starting %q", len(again), again[0].Data, n, rec(0))
	}
}

// FuzzOpen: whatever bytes a crash or a disk leaves in a segment, Open
// neither fails nor panics, and what it then reads is well-formed.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	q := open(f, dir, 1<<20, 4<<20)
	appendN(f, q, 0, 3)
	q.Close()
	good, _ := os.ReadFile(segments(&testing.T{}, dir)[0])
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%020d.seg", 1)), data, 0o640); err != nil {
			t.Fatal(err)
		}
		q, err := Open(Options{Dir: dir, SegmentBytes: 1 << 20, MaxBytes: 4 << 20})
		if err != nil {
			t.Fatalf("Open on damaged data: %v", err)
		}
		defer q.Close()
		st := q.Stats()
		got := readAll(t, q, true)
		if int64(len(got)) != st.Records {
			t.Fatalf("read %d records, stats said %d", len(got), st.Records)
		}
	})
}

func benchmarkAppendRead(b *testing.B, fsync time.Duration) {
	q, err := Open(Options{Dir: b.TempDir(), SegmentBytes: 8 << 20, MaxBytes: 1 << 30, FsyncInterval: fsync})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	payload := bytes.Repeat([]byte("s"), 256) // about one JSON message's samples
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	var recs []Record
	const batch = 64
	for i := 0; i < b.N; i += batch {
		// Appenders in parallel, as the MQTT workers are.
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := w; j < batch; j += 4 {
					if err := q.Append(payload, 7); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		for {
			recs, err = q.Read(recs, 5000)
			if err != nil {
				b.Fatal(err)
			}
			if len(recs) == 0 {
				break
			}
			if err := q.Ack(recs); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkAppendRead measures a record's trip through the queue: append
// by four concurrent writers, read back and acknowledge.
func BenchmarkAppendRead(b *testing.B) {
	b.Run("fsync=every-commit", func(b *testing.B) { benchmarkAppendRead(b, 0) })
	b.Run("fsync=100ms", func(b *testing.B) { benchmarkAppendRead(b, 100*time.Millisecond) })
}

// TestSlowSyncHoldsNothingUp: while the periodic fsync waits for the
// disk, appends (the sources' path), reads and acks go on, and what the
// sync wrote of the ack position never replaces a later one.
func TestSlowSyncHoldsNothingUp(t *testing.T) {
	dir := t.TempDir()
	// An interval long enough that only the explicit Sync below runs.
	q, err := Open(Options{Dir: dir, SegmentBytes: 1 << 20, MaxBytes: 4 << 20, FsyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	q.fsync = func(f *os.File) error {
		close(entered)
		<-release
		return f.Sync()
	}
	appendN(t, q, 0, 10)
	recs, err := q.Read(nil, 5)
	if err != nil || len(recs) == 0 {
		t.Fatalf("read %d records: %v", len(recs), err)
	}
	if err := q.Ack(recs); err != nil {
		t.Fatal(err)
	}
	synced := make(chan error, 1)
	go func() { synced <- q.Sync() }()
	<-entered

	done := make(chan struct{})
	go func() {
		defer close(done)
		appendN(t, q, 10, 10)
		var got []string
		for {
			recs, err := q.Read(nil, 100)
			if err != nil || len(recs) == 0 {
				break
			}
			for _, r := range recs {
				got = append(got, string(r.Data))
			}
			if err := q.Ack(recs); err != nil {
				t.Error(err)
				return
			}
		}
		if len(got) == 0 {
			t.Error("nothing read while the sync waited")
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("append, read and ack waited for the fsync")
	}
	close(release)
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	q.fsync = (*os.File).Sync
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	// Everything was acknowledged after the sync took its position: the
	// ack file must say so, or a restart sends it all again.
	q = open(t, dir, 1<<20, 4<<20)
	defer q.Close()
	if got := readAll(t, q, false); len(got) != 0 {
		t.Errorf("after restart %d records are unacknowledged, want 0", len(got))
	}
}
