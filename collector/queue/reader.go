package queue

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"
)

// chunk is how much of a segment the reader fetches per system call.
const chunk = 1 << 20

// reader walks the segments from the read position. Its file and buffer
// belong to the consumer goroutine; its counters are guarded by Queue.mu
// because dropping a segment (from an appender) needs them.
type reader struct {
	q *Queue

	// Guarded by q.mu.
	recsRead, weightRead int64 // of the segment q.read is in
	gen                  int   // bumped when the position is moved under the reader

	// Consumer only.
	file    *os.File
	fileSeq uint64
	buf     []byte
	bufOff  int64
	arena   []byte
}

// readIn reports what the reader has taken from segment s. Called with
// q.mu held.
func (r *reader) readIn(s *segment) (records, weight int64) {
	if r.q.read.Seg == s.seq {
		return r.recsRead, r.weightRead
	}
	return 0, 0
}

// reset follows a move of q.read made by someone else. Called with q.mu
// held.
func (r *reader) reset() {
	r.gen++
	r.recsRead, r.weightRead = 0, 0
	if s := r.q.segAt(r.q.read.Seg); s != nil && r.q.read == r.q.ack {
		r.recsRead, r.weightRead = s.ackedRecords, s.ackedWeight
	}
}

func (r *reader) closeIfOn(seq uint64) {
	if r.file != nil && r.fileSeq == seq {
		r.file.Close()
		r.file = nil
		r.buf = r.buf[:0]
	}
}

func (r *reader) close() {
	if r.file != nil {
		r.file.Close()
		r.file = nil
	}
}

func (r *reader) read(dst []Record, maxWeight int) ([]Record, error) {
	q := r.q
	dst = dst[:0]
	r.arena = r.arena[:0]
	type loc struct{ start, end int }
	var locs []loc
	total := 0
	for len(dst) == 0 || total < maxWeight {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil, ErrClosed
		}
		pos, gen := q.read, r.gen
		s, next := q.segAt(pos.Seg), q.segAfter(pos.Seg)
		if s == nil || pos.Off >= s.size {
			if next == nil || (s != nil && s == q.segs[len(q.segs)-1]) {
				q.mu.Unlock()
				break
			}
			q.read = Position{Seg: next.seq}
			r.recsRead, r.weightRead = 0, 0
			q.mu.Unlock()
			continue
		}
		path, limit := s.path, s.size
		q.mu.Unlock()

		data, weight, appended, n, err := r.at(pos.Seg, path, pos.Off, limit)
		if err != nil {
			return dst, err
		}
		q.mu.Lock()
		if gen != r.gen {
			q.mu.Unlock()
			continue // the position moved under us (a drop); read from there
		}
		q.read = Position{Seg: pos.Seg, Off: pos.Off + n}
		r.recsRead++
		r.weightRead += int64(weight)
		end := q.read
		q.mu.Unlock()

		start := len(r.arena)
		r.arena = append(r.arena, data...)
		locs = append(locs, loc{start, len(r.arena)})
		dst = append(dst, Record{Weight: weight, Appended: appended, End: end})
		total += weight
	}
	// Slices into the arena are taken last: it may have moved while
	// growing.
	for i := range dst {
		dst[i].Data = r.arena[locs[i].start:locs[i].end]
	}
	return dst, nil
}

// at reads the record at off of segment seq, whose valid part ends at
// limit, and returns its payload (valid until the next call), weight,
// append time and length on disk.
func (r *reader) at(seq uint64, path string, off, limit int64) ([]byte, int, time.Time, int64, error) {
	if r.file == nil || r.fileSeq != seq {
		r.close()
		f, err := os.Open(path)
		if err != nil {
			return nil, 0, time.Time{}, 0, fmt.Errorf("queue: open %s: %w", path, err)
		}
		r.file, r.fileSeq, r.buf = f, seq, r.buf[:0]
	}
	hdr, err := r.window(off, headerSize, limit)
	if err != nil {
		return nil, 0, time.Time{}, 0, err
	}
	n := int64(binary.LittleEndian.Uint32(hdr[0:4]))
	if n > maxRecord || off+headerSize+n > limit {
		return nil, 0, time.Time{}, 0, fmt.Errorf("queue: %s: damaged record at offset %d (length %d)", path, off, n)
	}
	rec, err := r.window(off, headerSize+n, limit)
	if err != nil {
		return nil, 0, time.Time{}, 0, err
	}
	payload := rec[headerSize:]
	if checksum(rec[8:headerSize], payload) != binary.LittleEndian.Uint32(rec[4:8]) {
		return nil, 0, time.Time{}, 0, fmt.Errorf("queue: %s: checksum mismatch at offset %d", path, off)
	}
	weight := int(binary.LittleEndian.Uint32(rec[16:20]))
	appended := time.Unix(0, int64(binary.LittleEndian.Uint64(rec[8:16])))
	return payload, weight, appended, headerSize + n, nil
}

// window returns n bytes of the file at off, from the buffer when it holds
// them, else after one read of at least chunk bytes.
func (r *reader) window(off, n, limit int64) ([]byte, error) {
	if off >= r.bufOff && off+n <= r.bufOff+int64(len(r.buf)) {
		return r.buf[off-r.bufOff : off-r.bufOff+n], nil
	}
	want := max(int64(chunk), n)
	want = min(want, limit-off)
	if int64(cap(r.buf)) < want {
		r.buf = make([]byte, want)
	}
	r.buf = r.buf[:want]
	got, err := r.file.ReadAt(r.buf, off)
	if int64(got) < n {
		r.buf = r.buf[:0]
		return nil, fmt.Errorf("queue: read segment %d at %d: %w", r.fileSeq, off, err)
	}
	r.buf, r.bufOff = r.buf[:got], off
	return r.buf[:n], nil
}

// segAfter returns the first segment after seq. Called with q.mu held.
func (q *Queue) segAfter(seq uint64) *segment {
	for _, s := range q.segs {
		if s.seq > seq {
			return s
		}
	}
	return nil
}
