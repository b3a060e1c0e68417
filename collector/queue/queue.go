// Package queue is the agent's store-and-forward buffer: a FIFO of opaque
// records on disk that survives the sink being down, the agent being
// killed and the power being cut.
//
// Records are appended to segment files (0000…0001.seg, …) behind a
// 20-byte header: payload length, CRC-32C, append time and a weight (the
// number of samples the record carries, for metrics and drop accounting).
// The CRC covers everything after itself, so a torn write or a flipped
// bit is found at start-up and skipped instead of being sent or stopping
// the agent. A record leaves the queue only when the consumer acknowledges
// it; the acknowledged position is kept in the file "ack", so after a
// restart only unconfirmed records are read again.
//
// Appends are group-committed: concurrent appenders share one write (and
// one fsync), so a source can wait until its record is on disk before it
// acknowledges the message to its peer without paying a syscall per
// message.
//
// Why not an existing library: the ones that fit the shape (tidwall/wal,
// as used by Telegraf's disk buffer; nsqio/go-diskqueue; joncrlsn/dque)
// either have no per-record checksum, refuse to open after a torn tail,
// or keep the read position in a way that resends everything after a
// restart. What is needed here is small enough to own and test.
package queue

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	headerSize = 20
	// maxRecord bounds one record so a corrupt length cannot make the
	// reader allocate gigabytes.
	maxRecord = 64 << 20
	segSuffix = ".seg"
	ackFile   = "ack"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("queue closed")

// Options tunes a queue. The agent builds it from Config.
type Options struct {
	// Dir holds the segments and the ack file; it is created if missing.
	Dir string
	// SegmentBytes is the size at which a new segment is started. Whole
	// segments are the unit of deletion and of dropping.
	SegmentBytes int64
	// MaxBytes bounds the queue on disk. When an append takes it over,
	// the oldest segments are dropped (counted in Stats) until it fits.
	MaxBytes int64
	// FsyncInterval 0 syncs every commit before Append returns; a
	// positive value syncs in the background at most that often, so a
	// killed process loses nothing but a power cut may lose that long.
	FsyncInterval time.Duration
	// Logger receives recovery and drop reports; nil discards.
	Logger *slog.Logger
}

// Position is the place just after a record: the record ends at Off in
// segment Seg.
type Position struct {
	Seg uint64
	Off int64
}

func (p Position) before(q Position) bool {
	return p.Seg < q.Seg || p.Seg == q.Seg && p.Off < q.Off
}

// Record is one record read from the queue.
type Record struct {
	// Data is the payload. It is only valid until the next Read.
	Data     []byte
	Weight   int
	Appended time.Time
	// End is the position to acknowledge once the record is safe.
	End Position
}

// Stats describes the queue's backlog and its losses since Open.
type Stats struct {
	Records int64 // unacknowledged records
	Weight  int64 // their total weight (samples)
	Bytes   int64 // bytes on disk, headers included
	// Oldest is the append time of the oldest unacknowledged record, zero
	// when there is none.
	Oldest time.Time
	// DroppedRecords and DroppedWeight were given up when MaxBytes was
	// reached.
	DroppedRecords, DroppedWeight int64
	// CorruptRecords and CorruptBytes were found damaged and skipped.
	CorruptRecords, CorruptBytes int64
}

type segment struct {
	seq     uint64
	path    string
	size    int64 // bytes of valid records; the reader stops here
	records int64
	weight  int64
	// acked counts this segment's records and weight before the ack
	// position, so the backlog can be told without rescanning.
	ackedRecords, ackedWeight int64
}

// Queue is a disk-backed FIFO. Append may be called from many goroutines;
// Read and Ack from one consumer.
type Queue struct {
	opt Options
	log *slog.Logger

	// mu guards the segment list, counters and positions.
	mu       sync.Mutex
	segs     []*segment // oldest first; the last is being written
	ack      Position
	read     Position
	stats    Stats
	closed   bool
	notify   chan struct{}
	dirty    bool // written but not fsynced
	ackDirty bool

	// Group commit: appenders add to pending under pendMu; one of them
	// takes commitMu and writes everything pending.
	pendMu     sync.Mutex
	pending    []byte
	pendRecs   int64
	pendWeight int64
	ticket     uint64 // next ticket to hand out
	commitMu   sync.Mutex
	committed  uint64 // every ticket below this is written
	commitErr  error
	// out is the segment being written: replaced with commitMu and mu
	// held, so either one is enough to read it.
	out *os.File

	// ackMu serialises writes of the ack file; ackWritten is the position
	// it holds, so a slow periodic write never replaces a newer one.
	ackMu      sync.Mutex
	ackWritten Position

	reader *reader

	stopSync chan struct{}
	syncDone chan struct{}
	// fsync is (*os.File).Sync; tests slow it down.
	fsync func(*os.File) error
}

// Open opens or creates the queue in opt.Dir, recovering from whatever a
// crash left: segments are checked record by record, a damaged record and
// the rest of its segment are skipped and counted, and a new segment is
// started for appends.
func Open(opt Options) (*Queue, error) {
	if opt.SegmentBytes <= 0 {
		opt.SegmentBytes = 8 << 20
	}
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = 1 << 30
	}
	if opt.MaxBytes < 2*opt.SegmentBytes {
		return nil, fmt.Errorf("queue: max bytes %d must be at least twice the segment size %d", opt.MaxBytes, opt.SegmentBytes)
	}
	q := &Queue{opt: opt, log: opt.Logger, notify: make(chan struct{}, 1), fsync: (*os.File).Sync}
	if q.log == nil {
		q.log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(opt.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := q.recover(); err != nil {
		return nil, err
	}
	if err := q.startSegment(); err != nil {
		return nil, err
	}
	q.read = q.ack
	q.reader = &reader{q: q}
	if opt.FsyncInterval > 0 {
		q.stopSync, q.syncDone = make(chan struct{}), make(chan struct{})
		go q.syncLoop()
	}
	return q, nil
}

func (q *Queue) recover() error {
	entries, err := os.ReadDir(q.opt.Dir)
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	var seqs []uint64
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, segSuffix) {
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 10, 64)
		if err != nil {
			continue
		}
		seqs = append(seqs, seq)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })

	ack, ackErr := readAck(filepath.Join(q.opt.Dir, ackFile))
	if ackErr != nil {
		q.log.Warn("queue: the acknowledged position is unreadable; every record on disk will be sent again (duplicates overwrite themselves)", "dir", q.opt.Dir, "err", ackErr)
	}
	for _, seq := range seqs {
		path := q.segPath(seq)
		if seq < ack.Seg {
			// Entirely acknowledged; left over from a crash before the
			// delete.
			_ = os.Remove(path)
			continue
		}
		s, err := q.scan(seq, path)
		if err != nil {
			return err
		}
		q.segs = append(q.segs, s)
	}
	if len(q.segs) == 0 || ack.Seg < q.segs[0].seq {
		ack = Position{}
		if len(q.segs) > 0 {
			ack = Position{Seg: q.segs[0].seq}
		}
	}
	q.ack = ack
	// Count what was acknowledged in the ack segment.
	if s := q.segAt(ack.Seg); s != nil && ack.Off > 0 {
		if ack.Off > s.size {
			ack.Off = s.size
			q.ack = ack
		}
		recs, weight, err := countUpTo(s.path, ack.Off)
		if err != nil {
			return err
		}
		s.ackedRecords, s.ackedWeight = recs, weight
	}
	if q.stats.CorruptRecords > 0 {
		q.log.Warn("queue: damaged records found and skipped (a power cut or disk error); the rest will be delivered",
			"dir", q.opt.Dir, "records", q.stats.CorruptRecords, "bytes", q.stats.CorruptBytes)
	}
	return nil
}

// scan checks every record of one segment. A damaged record ends the
// segment there: what follows cannot be framed reliably. The file is
// truncated to its valid part, so appends never follow garbage.
func (q *Queue) scan(seq uint64, path string) (*segment, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	s := &segment{seq: seq, path: path}
	br := bufio.NewReaderSize(f, 1<<20)
	var hdr [headerSize]byte
	buf := make([]byte, 0, 64<<10)
	for s.size < info.Size() {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			break
		}
		n := binary.LittleEndian.Uint32(hdr[0:4])
		if n > maxRecord || s.size+headerSize+int64(n) > info.Size() {
			break
		}
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			break
		}
		if checksum(hdr[8:], buf) != binary.LittleEndian.Uint32(hdr[4:8]) {
			break
		}
		s.size += headerSize + int64(n)
		s.records++
		s.weight += int64(binary.LittleEndian.Uint32(hdr[16:20]))
	}
	if s.size < info.Size() {
		q.stats.CorruptRecords++
		q.stats.CorruptBytes += info.Size() - s.size
		q.log.Warn("queue: damaged record; skipping the rest of the segment", "segment", path,
			"offset", s.size, "skipped_bytes", info.Size()-s.size)
		if err := f.Truncate(s.size); err != nil {
			return nil, fmt.Errorf("queue: truncate damaged segment %s: %w", path, err)
		}
	}
	q.stats.Bytes += s.size
	return s, nil
}

func countUpTo(path string, off int64) (records, weight int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("queue: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	var hdr [headerSize]byte
	for pos := int64(0); pos < off; {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return 0, 0, fmt.Errorf("queue: count acknowledged records in %s: %w", path, err)
		}
		n := int64(binary.LittleEndian.Uint32(hdr[0:4]))
		if _, err := br.Discard(int(n)); err != nil {
			return 0, 0, fmt.Errorf("queue: count acknowledged records in %s: %w", path, err)
		}
		pos += headerSize + n
		records++
		weight += int64(binary.LittleEndian.Uint32(hdr[16:20]))
	}
	return records, weight, nil
}

func checksum(rest, payload []byte) uint32 {
	c := crc32.Update(0, crcTable, rest)
	return crc32.Update(c, crcTable, payload)
}

func (q *Queue) segPath(seq uint64) string {
	return filepath.Join(q.opt.Dir, fmt.Sprintf("%020d%s", seq, segSuffix))
}

func (q *Queue) segAt(seq uint64) *segment {
	for _, s := range q.segs {
		if s.seq == seq {
			return s
		}
	}
	return nil
}

// startSegment closes the current segment for writing and opens the next.
// Called with commitMu held, or during Open.
func (q *Queue) startSegment() error {
	var seq uint64 = 1
	q.mu.Lock()
	if n := len(q.segs); n > 0 {
		seq = q.segs[n-1].seq + 1
	}
	q.mu.Unlock()
	if q.out != nil {
		if err := q.out.Sync(); err != nil {
			return fmt.Errorf("queue: sync segment: %w", err)
		}
		old := q.out
		q.mu.Lock()
		q.out = nil
		q.mu.Unlock()
		if err := old.Close(); err != nil {
			return fmt.Errorf("queue: close segment: %w", err)
		}
	}
	s := &segment{seq: seq, path: q.segPath(seq)}
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("queue: new segment: %w", err)
	}
	if err := syncDir(q.opt.Dir); err != nil {
		f.Close()
		return err
	}
	q.mu.Lock()
	q.out = f
	q.segs = append(q.segs, s)
	if len(q.segs) == 1 {
		q.ack = Position{Seg: seq}
		q.read = q.ack
	}
	q.mu.Unlock()
	return nil
}

// Append adds one record and returns once it is written to the operating
// system (and, with FsyncInterval 0, synced to disk). From then on it
// survives the process being killed.
func (q *Queue) Append(data []byte, weight int) error {
	if len(data) > maxRecord {
		return fmt.Errorf("queue: record of %d bytes is over the %d byte limit", len(data), maxRecord)
	}
	q.pendMu.Lock()
	var hdr [headerSize]byte
	binary.LittleEndian.PutUint32(hdr[0:4], uint32(len(data)))
	binary.LittleEndian.PutUint64(hdr[8:16], uint64(time.Now().UnixNano()))
	binary.LittleEndian.PutUint32(hdr[16:20], uint32(weight))
	binary.LittleEndian.PutUint32(hdr[4:8], checksum(hdr[8:], data))
	q.pending = append(append(q.pending, hdr[:]...), data...)
	q.pendRecs++
	q.pendWeight += int64(weight)
	mine := q.ticket
	q.ticket++
	q.pendMu.Unlock()

	q.commitMu.Lock()
	defer q.commitMu.Unlock()
	if q.committed > mine {
		return q.commitErr // a later appender wrote ours too
	}
	return q.commit()
}

// commit writes everything pending as one write. Called with commitMu held.
func (q *Queue) commit() error {
	q.pendMu.Lock()
	buf, recs, weight, upto := q.pending, q.pendRecs, q.pendWeight, q.ticket
	q.pending, q.pendRecs, q.pendWeight = nil, 0, 0
	q.pendMu.Unlock()

	q.mu.Lock()
	closed := q.closed
	cur := q.segs[len(q.segs)-1]
	q.mu.Unlock()
	if closed {
		q.committed, q.commitErr = upto, ErrClosed
		return ErrClosed
	}
	if cur.size > 0 && cur.size+int64(len(buf)) > q.opt.SegmentBytes {
		if err := q.startSegment(); err != nil {
			q.committed, q.commitErr = upto, err
			return err
		}
		q.mu.Lock()
		cur = q.segs[len(q.segs)-1]
		q.mu.Unlock()
	}
	_, err := q.out.Write(buf)
	if err == nil && q.opt.FsyncInterval == 0 {
		err = q.out.Sync()
	}
	if err != nil {
		// The file may hold part of buf; the next Open truncates it at
		// the damaged record. Nothing of buf is acknowledged upstream.
		err = fmt.Errorf("queue: write %s: %w", cur.path, err)
		q.committed, q.commitErr = upto, err
		return err
	}
	q.mu.Lock()
	cur.size += int64(len(buf))
	cur.records += recs
	cur.weight += weight
	q.stats.Bytes += int64(len(buf))
	q.dirty = q.opt.FsyncInterval > 0
	q.enforceBound()
	q.mu.Unlock()
	q.committed, q.commitErr = upto, nil
	select {
	case q.notify <- struct{}{}:
	default:
	}
	// Keep the buffer for reuse if it is not huge.
	if cap(buf) <= 4<<20 {
		q.pendMu.Lock()
		if q.pending == nil {
			q.pending = buf[:0]
		}
		q.pendMu.Unlock()
	}
	return nil
}

// enforceBound drops the oldest segments while the queue is over its
// bound. Records already handed to the consumer are not counted as
// dropped: the consumer still delivers them from memory. Called with mu
// held.
func (q *Queue) enforceBound() {
	for q.stats.Bytes > q.opt.MaxBytes && len(q.segs) > 1 {
		s := q.segs[0]
		// Records already read are in the consumer's hands; count only the
		// rest of the segment.
		var readRecs, readWeight int64
		if q.read.Seg > s.seq {
			readRecs, readWeight = s.records, s.weight
		} else if q.read.Seg == s.seq {
			readRecs, readWeight = q.reader.readIn(s)
		}
		dropRecs, dropWeight := s.records-readRecs, s.weight-readWeight
		q.stats.DroppedRecords += dropRecs
		q.stats.DroppedWeight += dropWeight
		q.stats.Bytes -= s.size
		q.segs = q.segs[1:]
		_ = os.Remove(s.path)
		next := Position{Seg: q.segs[0].seq}
		if q.ack.before(next) {
			q.ack = next
			q.ackDirty = true
		}
		if q.read.before(next) {
			q.read = next
			q.reader.reset()
		}
		q.log.Warn("queue: full; dropped the oldest segment", "dir", q.opt.Dir, "records", dropRecs, "samples", dropWeight,
			"max_bytes", q.opt.MaxBytes)
	}
}

// Notify returns a channel that receives after records were appended.
func (q *Queue) Notify() <-chan struct{} { return q.notify }

// Read returns unread records in order, up to maxWeight in total weight
// (at least one record when any is unread). The records stay in the queue
// until acknowledged; Read moves only the read position.
func (q *Queue) Read(dst []Record, maxWeight int) ([]Record, error) {
	return q.reader.read(dst, maxWeight)
}

// Rewind moves the read position back to the acknowledged one, so
// unacknowledged records are read again.
func (q *Queue) Rewind() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.read = q.ack
	q.reader.reset()
}

// Ack marks records, read in order and now delivered, as gone: the
// acknowledged position moves past the last of them, and segments that are
// then entirely delivered are deleted. Records of a segment dropped in the
// meantime are ignored.
func (q *Queue) Ack(recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, r := range recs {
		if !q.ack.before(r.End) {
			continue // already acknowledged, or in a dropped segment
		}
		if s := q.segAt(r.End.Seg); s != nil {
			s.ackedRecords++
			s.ackedWeight += int64(r.Weight)
		}
		q.ack = r.End
	}
	for len(q.segs) > 1 && q.segs[0].seq < q.ack.Seg {
		s := q.segs[0]
		q.stats.Bytes -= s.size
		q.segs = q.segs[1:]
		q.reader.closeIfOn(s.seq)
		_ = os.Remove(s.path)
	}
	q.ackDirty = true
	if q.opt.FsyncInterval == 0 {
		return q.writeAckLocked()
	}
	return nil
}

func (q *Queue) writeAckLocked() error {
	if !q.ackDirty {
		return nil
	}
	if err := q.writeAck(q.ack, q.opt.FsyncInterval == 0); err != nil {
		return err
	}
	q.ackDirty = false
	return nil
}

// Stats reports the backlog and the losses.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	st := q.stats
	var oldestSeg *segment
	for _, s := range q.segs {
		st.Records += s.records - s.ackedRecords
		st.Weight += s.weight - s.ackedWeight
		if oldestSeg == nil && s.records > s.ackedRecords {
			oldestSeg = s
		}
	}
	ack := q.ack
	q.mu.Unlock()
	if oldestSeg != nil {
		off := int64(0)
		if oldestSeg.seq == ack.Seg {
			off = ack.Off
		}
		st.Oldest = appendTimeAt(oldestSeg.path, off)
	}
	return st
}

func appendTimeAt(path string, off int64) time.Time {
	f, err := os.Open(path)
	if err != nil {
		return time.Time{}
	}
	defer f.Close()
	var hdr [headerSize]byte
	if _, err := f.ReadAt(hdr[:], off); err != nil {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.LittleEndian.Uint64(hdr[8:16])))
}

// Sync writes what is pending to disk now. It holds no lock while the
// disk works: fsync covers whatever was written before it began, and
// appenders waiting behind a sync every FsyncInterval would stall every
// source that often (at QoS 0 long enough for the broker to drop).
func (q *Queue) Sync() error {
	q.mu.Lock()
	out, dirty := q.out, q.dirty
	q.dirty = false
	ack, ackDirty := q.ack, q.ackDirty
	q.ackDirty = false
	q.mu.Unlock()
	if dirty && out != nil {
		// A segment closed meanwhile was synced before it was closed.
		if err := q.fsync(out); err != nil && !errors.Is(err, os.ErrClosed) {
			q.mu.Lock()
			q.dirty = true
			q.mu.Unlock()
			return fmt.Errorf("queue: sync: %w", err)
		}
	}
	if ackDirty {
		if err := q.writeAck(ack, true); err != nil {
			q.mu.Lock()
			q.ackDirty = true
			q.mu.Unlock()
			return err
		}
	}
	return nil
}

// writeAck writes p to the ack file unless a later position is there
// already.
func (q *Queue) writeAck(p Position, sync bool) error {
	q.ackMu.Lock()
	defer q.ackMu.Unlock()
	if p.before(q.ackWritten) {
		return nil
	}
	if err := writeAck(filepath.Join(q.opt.Dir, ackFile), p, sync); err != nil {
		return err
	}
	q.ackWritten = p
	return nil
}

func (q *Queue) syncLoop() {
	defer close(q.syncDone)
	t := time.NewTicker(q.opt.FsyncInterval)
	defer t.Stop()
	for {
		select {
		case <-q.stopSync:
			return
		case <-t.C:
			if err := q.Sync(); err != nil {
				q.log.Error("queue: background sync failed", "dir", q.opt.Dir, "err", err)
			}
		}
	}
}

// Close syncs everything and closes the files. Appends after Close fail
// with ErrClosed.
func (q *Queue) Close() error {
	if q.stopSync != nil {
		close(q.stopSync)
		<-q.syncDone
	}
	q.commitMu.Lock()
	defer q.commitMu.Unlock()
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.dirty = true
	q.ackDirty = true
	q.mu.Unlock()
	err := q.Sync()
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.reader.close()
	q.mu.Lock()
	out := q.out
	q.out = nil
	q.mu.Unlock()
	if out != nil {
		err = errors.Join(err, out.Close())
	}
	return err
}

func readAck(path string) (Position, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Position{}, nil
	}
	if err != nil {
		return Position{}, err
	}
	if len(b) != 20 || crc32.Checksum(b[:16], crcTable) != binary.LittleEndian.Uint32(b[16:20]) {
		return Position{}, fmt.Errorf("%s is damaged", path)
	}
	return Position{Seg: binary.LittleEndian.Uint64(b[0:8]), Off: int64(binary.LittleEndian.Uint64(b[8:16]))}, nil
}

// writeAck replaces the ack file atomically: a crash leaves the old or the
// new position, never a mix.
func writeAck(path string, p Position, sync bool) error {
	var b [20]byte
	binary.LittleEndian.PutUint64(b[0:8], p.Seg)
	binary.LittleEndian.PutUint64(b[8:16], uint64(p.Off))
	binary.LittleEndian.PutUint32(b[16:20], crc32.Checksum(b[:16], crcTable))
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("queue: write ack: %w", err)
	}
	_, err = f.Write(b[:])
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("queue: write ack: %w", err)
	}
	if sync {
		return syncDir(filepath.Dir(path))
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("queue: sync %s: %w", dir, err)
	}
	return nil
}
